//! What a run is: a mode (closed or open loop), when it stops, how long it
//! warms up; and [`run`], which runs it and returns its [`Stats`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::progress::Progress;
use crate::stats::Stats;
use crate::target::Target;
use crate::{closed, open};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Mode {
    /// `concurrency` clients, each sending its next request when the
    /// previous one answered.
    Closed {
        /// Number of clients.
        concurrency: usize,
    },
    /// A fixed arrival rate; latency counts from the intended send time.
    Open {
        /// Requests per second.
        rate: f64,
        /// Cap on requests in flight; when reached, further sends wait (and
        /// the wait counts in their latency).
        max_in_flight: usize,
    },
}

/// When a run ends (not counting its warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    /// After this long. A closed loop sends no request after the end; an
    /// open loop sends `rate × duration` requests.
    Duration(Duration),
    /// After this many measured requests.
    Requests(u64),
}

/// A whole run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Pacing.
    pub mode: Mode,
    /// End of the measured part.
    pub stop: Stop,
    /// Time at the start whose requests are sent but not accounted.
    pub warmup: Duration,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    /// A closed loop needs at least one client.
    #[error("concurrency must be at least 1")]
    Concurrency,
    /// An open loop needs a finite rate above zero.
    #[error("rate must be a finite number of requests per second above 0, not {0}")]
    Rate(f64),
    /// An open loop must allow at least one request in flight.
    #[error("max in flight must be at least 1")]
    MaxInFlight,
    /// Nothing to measure.
    #[error("the run must measure at least one request (requests or duration is 0)")]
    Empty,
}

impl RunConfig {
    /// Checks the numbers before anything is sent.
    pub fn validate(&self) -> Result<(), RunError> {
        match self.mode {
            Mode::Closed { concurrency } if concurrency == 0 => return Err(RunError::Concurrency),
            Mode::Open { rate, .. } if !(rate.is_finite() && rate > 0.0) => {
                return Err(RunError::Rate(rate))
            }
            Mode::Open { max_in_flight, .. } if max_in_flight == 0 => {
                return Err(RunError::MaxInFlight)
            }
            _ => {}
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => Err(RunError::Empty),
            Stop::Requests(0) => Err(RunError::Empty),
            _ => Ok(()),
        }
    }
}

/// Runs `cfg` against `target` and returns what was measured.
pub async fn run(
    client: &Client,
    target: &Target,
    cfg: &RunConfig,
    progress: &Arc<Progress>,
) -> Result<Stats, RunError> {
    cfg.validate()?;
    match cfg.mode {
        Mode::Closed { concurrency } => {
            Ok(closed::run(client, target, concurrency, cfg.stop, cfg.warmup, progress).await)
        }
        Mode::Open {
            rate,
            max_in_flight,
        } => Ok(open::run(
            client,
            target,
            open::Schedule::new(rate, cfg.stop, cfg.warmup),
            max_in_flight,
            progress,
        )
        .await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_messages() {
        let cfg = |mode, stop| RunConfig {
            mode,
            stop,
            warmup: Duration::ZERO,
        };
        let ok_stop = Stop::Requests(1);
        assert_eq!(
            cfg(Mode::Closed { concurrency: 0 }, ok_stop).validate(),
            Err(RunError::Concurrency)
        );
        let e = cfg(
            Mode::Open {
                rate: -1.0,
                max_in_flight: 1,
            },
            ok_stop,
        )
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rate must be a finite number of requests per second above 0, not -1"
        );
        assert_eq!(
            cfg(
                Mode::Open {
                    rate: 10.0,
                    max_in_flight: 0
                },
                ok_stop
            )
            .validate(),
            Err(RunError::MaxInFlight)
        );
        assert_eq!(
            cfg(
                Mode::Closed { concurrency: 1 },
                Stop::Duration(Duration::ZERO)
            )
            .validate(),
            Err(RunError::Empty)
        );
        assert_eq!(
            cfg(Mode::Closed { concurrency: 1 }, ok_stop).validate(),
            Ok(())
        );
    }
}
