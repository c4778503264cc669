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
            Mode::Closed { concurrency: 0 } => return Err(RunError::Concurrency),
            Mode::Open { rate, .. } if !(rate.is_finite() && rate > 0.0) => {
                return Err(RunError::Rate(rate))
            }
            Mode::Open {
                max_in_flight: 0, ..
            } => return Err(RunError::MaxInFlight),
            _ => {}
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => Err(RunError::Empty),
            Stop::Requests(0) => Err(RunError::Empty),
            _ => Ok(()),
        }
    }
}

/// Why a duration could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad duration {0:?}: expected a number with a unit (us, ms, s, m, h), like 500ms or 1.5s")]
pub struct DurationError(pub String);

/// Reads a duration written as a number and a unit: `us`, `ms`, `s`, `m`
/// `h` (for example `250us`, `500ms`, `1.5s`, `2m`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError(text.to_owned()))?;
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(DurationError(text.to_owned())),
    };
    let value: f64 = number.parse().map_err(|_| DurationError(text.to_owned()))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| DurationError(text.to_owned()))
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
    fn durations() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "1.2.3s", "5d", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("10").unwrap_err().to_string(),
            "bad duration \"10\": expected a number with a unit (us, ms, s, m, h), like 500ms or 1.5s"
        );
    }

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
