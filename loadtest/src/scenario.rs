//! Scenarios of a comparison and the two ways to write them.
//!
//! A scenario is either an HTTP run against thaw (a [`Target`] and a
//! [`RunConfig`]) or an `exec` helper outside HTTP (such as the fork floor):
//! a command run once per round that prints one latency per line, in
//! microseconds, on stdout.
//!
//! # On the command line
//!
//! ```text
//! --scenario NAME=KEY=VALUE,KEY=VALUE,...
//! --scenario warm=
//! --scenario boot=cold=boot
//! --scenario restore-uffd=function=hello-uffd,cold=restore,requests=30
//! --scenario fork=exec=thaw-forkfloor --iterations 30
//! ```
//!
//! Values cannot contain commas, except `exec`, which must be the last key:
//! the rest of the spec is its command line, split on whitespace. Keys a
//! scenario leaves out come from the defaults (the command's own options,
//! or the `[defaults]` table of a file).
//!
//! # In a TOML file
//!
//! ```toml
//! rounds = 5            # optional, like the command's options
//! baseline = "warm"
//! seed = 1
//! resamples = 10000
//!
//! [defaults]            # any scenario key
//! function = "hello"
//! requests = 20
//!
//! [[scenario]]
//! name = "warm"
//!
//! [[scenario]]
//! name = "boot"
//! cold = "boot"
//!
//! [[scenario]]
//! name = "fork"
//! exec = ["thaw-forkfloor", "--iterations", "30"]
//! ```
//!
//! # Keys
//!
//! | key | meaning | default |
//! |-----|---------|---------|
//! | `server` | thaw's address | `http://127.0.0.1:7070` |
//! | `function` | function to invoke | required for HTTP |
//! | `body` | the request body | `{}` |
//! | `body-file` | file of bodies (see [`crate::target`]) | |
//! | `cold` | `boot` or `restore`: sends `x-thaw-cold` | warm |
//! | `concurrency` | closed loop with this many clients | 1 |
//! | `rate` | open loop at this many requests/s | closed loop |
//! | `max-in-flight` | open-loop cap on outstanding requests | 1024 |
//! | `requests` | measured requests per round | 20 |
//! | `duration` | or measured time per round (`500ms`, `2s`) | |
//! | `warmup` | unmeasured time at the start of each round | `0s` |
//! | `exec` | helper command instead of HTTP | |

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::run::{parse_duration, Mode, RunConfig, Stop};
use crate::target::{bodies_from_file, ColdStart, Target, TargetError};

/// The server address used when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";
/// Measured requests per round when neither `requests` nor `duration` is set.
pub const DEFAULT_REQUESTS: u64 = 20;
/// Open-loop cap on outstanding requests when none is given.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The keys of one scenario (or of the defaults), all optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScenarioSpec {
    /// The scenario's name (TOML `[[scenario]]` tables only).
    pub name: Option<String>,
    /// thaw's address.
    pub server: Option<String>,
    /// The function to invoke.
    pub function: Option<String>,
    /// One request body.
    pub body: Option<String>,
    /// A file of request bodies.
    pub body_file: Option<PathBuf>,
    /// A forced cold start.
    pub cold: Option<ColdStart>,
    /// Closed-loop clients.
    pub concurrency: Option<usize>,
    /// Open-loop rate, requests per second.
    pub rate: Option<f64>,
    /// Open-loop cap on outstanding requests.
    pub max_in_flight: Option<usize>,
    /// Measured requests per round.
    pub requests: Option<u64>,
    /// Measured time per round, like `2s`.
    pub duration: Option<String>,
    /// Unmeasured time at the start of each round, like `500ms`.
    pub warmup: Option<String>,
    /// A helper command (program and arguments) instead of HTTP.
    pub exec: Option<Vec<String>>,
}

/// A comparison file (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareFile {
    /// Rounds to run.
    pub rounds: Option<usize>,
    /// Name of the scenario the others are divided by.
    pub baseline: Option<String>,
    /// Seed of the bootstrap.
    pub seed: Option<u64>,
    /// Bootstrap resamples.
    pub resamples: Option<usize>,
    /// Keys every scenario inherits.
    #[serde(default)]
    pub defaults: ScenarioSpec,
    /// The scenarios, in the order they run within a round.
    #[serde(default)]
    pub scenario: Vec<ScenarioSpec>,
}

/// Why a scenario could not be read or built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A `--scenario` argument does not follow the syntax.
    #[error("bad scenario {spec:?}: {why}")]
    Syntax {
        /// The argument.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// A scenario's keys do not make a runnable scenario.
    #[error("scenario {name:?}: {why}")]
    Invalid {
        /// The scenario.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The target could not be built.
    #[error("scenario {name:?}: {cause}")]
    Target {
        /// The scenario.
        name: String,
        /// Why.
        cause: TargetError,
    },
    /// The comparison file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The comparison file is not valid TOML of the expected shape.
    #[error("bad comparison file {path}: {cause}")]
    Toml {
        /// The file.
        path: String,
        /// What the parser said.
        cause: toml::de::Error,
    },
}

/// A runnable scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name in reports.
    pub name: String,
    /// What it runs.
    pub kind: ScenarioKind,
}

/// What a scenario runs.
// A comparison holds a handful of these: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ScenarioKind {
    /// A run against thaw.
    Http {
        /// Where.
        target: Target,
        /// How.
        config: RunConfig,
    },
    /// A helper printing latencies in µs, one per line.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

impl ScenarioSpec {
    /// Reads a `--scenario NAME=KEY=VALUE,...` argument.
    pub fn parse_arg(arg: &str) -> Result<ScenarioSpec, SpecError> {
        let syntax = |why: &str| SpecError::Syntax {
            spec: arg.to_owned(),
            why: why.to_owned(),
        };
        let (name, mut rest) = arg
            .split_once('=')
            .ok_or_else(|| syntax("expected NAME=KEY=VALUE,..."))?;
        if name.trim().is_empty() {
            return Err(syntax("the name is empty"));
        }
        let mut spec = ScenarioSpec {
            name: Some(name.trim().to_owned()),
            ..ScenarioSpec::default()
        };
        while !rest.trim().is_empty() {
            let (key, after) = rest
                .split_once('=')
                .ok_or_else(|| syntax(&format!("expected KEY=VALUE in {rest:?}")))?;
            let key = key.trim();
            if key == "exec" {
                let argv: Vec<String> = after.split_whitespace().map(str::to_owned).collect();
                if argv.is_empty() {
                    return Err(syntax("exec needs a command"));
                }
                spec.exec = Some(argv);
                break;
            }
            let (value, next) = after.split_once(',').unwrap_or((after, ""));
            rest = next;
            spec.set(key, value.trim())
                .map_err(|why| syntax(&format!("{key}: {why}")))?;
        }
        Ok(spec)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("{v:?} is not a number"))
        }
        match key {
            "server" => self.server = Some(value.to_owned()),
            "function" => self.function = Some(value.to_owned()),
            "body" => self.body = Some(value.to_owned()),
            "body-file" => self.body_file = Some(PathBuf::from(value)),
            "cold" => self.cold = Some(value.parse().map_err(|e: TargetError| e.to_string())?),
            "concurrency" => self.concurrency = Some(num(value)?),
            "rate" => self.rate = Some(num(value)?),
            "max-in-flight" => self.max_in_flight = Some(num(value)?),
            "requests" => self.requests = Some(num(value)?),
            "duration" => self.duration = Some(value.to_owned()),
            "warmup" => self.warmup = Some(value.to_owned()),
            _ => return Err("unknown key".to_owned()),
        }
        Ok(())
    }

    /// Fills the keys this spec leaves out from `defaults`. The run length
    /// (`requests` / `duration`) and the pacing (`concurrency` / `rate`) are
    /// taken as pairs, so a scenario's `duration` is not combined with a
    /// default `requests`.
    pub fn or(&self, defaults: &ScenarioSpec) -> ScenarioSpec {
        let mut s = self.clone();
        macro_rules! inherit {
            ($($f:ident),*) => { $( if s.$f.is_none() { s.$f = defaults.$f.clone(); } )* };
        }
        inherit!(
            server,
            function,
            body,
            body_file,
            cold,
            max_in_flight,
            warmup
        );
        if s.requests.is_none() && s.duration.is_none() {
            s.requests = defaults.requests;
            s.duration = defaults.duration.clone();
        }
        if s.concurrency.is_none() && s.rate.is_none() {
            s.concurrency = defaults.concurrency;
            s.rate = defaults.rate;
        }
        s
    }

    /// Builds the scenario named `name` (defaults already applied).
    pub fn build(&self, name: &str, token: Option<&str>) -> Result<Scenario, SpecError> {
        let invalid = |why: &str| SpecError::Invalid {
            name: name.to_owned(),
            why: why.to_owned(),
        };
        if let Some(argv) = &self.exec {
            if argv.is_empty() {
                return Err(invalid("exec needs a command"));
            }
            return Ok(Scenario {
                name: name.to_owned(),
                kind: ScenarioKind::Exec { argv: argv.clone() },
            });
        }
        let function = self
            .function
            .as_deref()
            .ok_or_else(|| invalid("no function (set function=NAME or a default)"))?;
        let with_name = |cause| SpecError::Target {
            name: name.to_owned(),
            cause,
        };
        let server = self.server.as_deref().unwrap_or(DEFAULT_SERVER);
        let bodies: Option<Vec<Bytes>> = match (&self.body, &self.body_file) {
            (Some(_), Some(_)) => return Err(invalid("give body or body-file, not both")),
            (Some(b), None) => Some(vec![Bytes::from(b.clone())]),
            (None, Some(path)) => Some(bodies_from_file(path).map_err(with_name)?),
            (None, None) => None,
        };
        let mut target = Target::new(server, function)
            .map_err(with_name)?
            .with_cold(self.cold)
            .with_token(token)
            .map_err(with_name)?;
        if let Some(bodies) = bodies {
            target = target.with_bodies(bodies).map_err(with_name)?;
        }
        let duration = |text: &str| parse_duration(text).map_err(|e| invalid(&e.to_string()));
        let mode = match (self.concurrency, self.rate) {
            (Some(_), Some(_)) => return Err(invalid("give concurrency or rate, not both")),
            (_, Some(rate)) => Mode::Open {
                rate,
                max_in_flight: self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            },
            (c, None) => Mode::Closed {
                concurrency: c.unwrap_or(1),
            },
        };
        let stop = match (self.requests, &self.duration) {
            (Some(_), Some(_)) => return Err(invalid("give requests or duration, not both")),
            (Some(n), None) => Stop::Requests(n),
            (None, Some(d)) => Stop::Duration(duration(d)?),
            (None, None) => Stop::Requests(DEFAULT_REQUESTS),
        };
        let warmup = match &self.warmup {
            Some(w) => duration(w)?,
            None => Duration::ZERO,
        };
        let config = RunConfig { mode, stop, warmup };
        config.validate().map_err(|e| invalid(&e.to_string()))?;
        Ok(Scenario {
            name: name.to_owned(),
            kind: ScenarioKind::Http { target, config },
        })
    }
}

impl CompareFile {
    /// Reads and parses a comparison file.
    pub fn read(path: &Path) -> Result<CompareFile, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SpecError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        toml::from_str(&text).map_err(|cause| SpecError::Toml {
            path: path.display().to_string(),
            cause,
        })
    }
}

/// Builds scenarios from specs, applying `defaults`; names must be given and
/// distinct.
pub fn build_all(
    specs: &[ScenarioSpec],
    defaults: &ScenarioSpec,
    token: Option<&str>,
) -> Result<Vec<Scenario>, SpecError> {
    let mut out: Vec<Scenario> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let name = spec.name.clone().ok_or_else(|| SpecError::Invalid {
            name: format!("#{}", i + 1),
            why: "no name".to_owned(),
        })?;
        if out.iter().any(|s| s.name == name) {
            return Err(SpecError::Invalid {
                name,
                why: "the name is used twice".to_owned(),
            });
        }
        out.push(spec.or(defaults).build(&name, token)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_line_specs() {
        let s = ScenarioSpec::parse_arg("boot=cold=boot, requests=5").unwrap();
        assert_eq!(s.name.as_deref(), Some("boot"));
        assert_eq!(s.cold, Some(ColdStart::Boot));
        assert_eq!(s.requests, Some(5));
        let w = ScenarioSpec::parse_arg("warm=").unwrap();
        assert_eq!(
            w,
            ScenarioSpec {
                name: Some("warm".into()),
                ..ScenarioSpec::default()
            }
        );
        let f = ScenarioSpec::parse_arg("fork=rate=50,exec=helper --n 3,x").unwrap();
        assert_eq!(f.rate, Some(50.0));
        assert_eq!(
            f.exec,
            Some(vec!["helper".into(), "--n".into(), "3,x".into()])
        );
    }

    #[test]
    fn spec_errors_say_what_is_wrong() {
        let msg = |a: &str| ScenarioSpec::parse_arg(a).unwrap_err().to_string();
        assert_eq!(
            msg("warm"),
            "bad scenario \"warm\": expected NAME=KEY=VALUE,..."
        );
        assert_eq!(
            msg("=cold=boot"),
            "bad scenario \"=cold=boot\": the name is empty"
        );
        assert_eq!(
            msg("a=colour=red"),
            "bad scenario \"a=colour=red\": colour: unknown key"
        );
        assert_eq!(
            msg("a=cold=warm"),
            "bad scenario \"a=cold=warm\": cold: bad cold start \"warm\": expected boot or restore"
        );
        assert_eq!(
            msg("a=requests=many"),
            "bad scenario \"a=requests=many\": requests: \"many\" is not a number"
        );
    }

    #[test]
    fn defaults_fill_in_and_build() {
        let defaults = ScenarioSpec {
            function: Some("hello".into()),
            requests: Some(7),
            concurrency: Some(2),
            ..ScenarioSpec::default()
        };
        let own = ScenarioSpec::parse_arg("open=rate=100,duration=2s,cold=restore").unwrap();
        let built = build_all(&[own], &defaults, Some("tok")).unwrap();
        let ScenarioKind::Http { target, config } = &built[0].kind else {
            panic!("not http");
        };
        assert_eq!(target.function(), "hello");
        assert_eq!(target.cold(), Some(ColdStart::Restore));
        assert_eq!(
            target.uri().to_string(),
            "http://127.0.0.1:7070/functions/hello/invoke"
        );
        assert_eq!(
            config.mode,
            Mode::Open {
                rate: 100.0,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT
            }
        );
        assert_eq!(config.stop, Stop::Duration(Duration::from_secs(2)));

        let plain = build_all(
            &[ScenarioSpec::parse_arg("warm=").unwrap()],
            &defaults,
            None,
        )
        .unwrap();
        let ScenarioKind::Http { config, .. } = &plain[0].kind else {
            panic!("not http");
        };
        assert_eq!(config.mode, Mode::Closed { concurrency: 2 });
        assert_eq!(config.stop, Stop::Requests(7));
    }

    #[test]
    fn invalid_scenarios_are_refused() {
        let err = |specs: &[&str]| {
            let specs: Vec<_> = specs
                .iter()
                .map(|a| ScenarioSpec::parse_arg(a).unwrap())
                .collect();
            build_all(&specs, &ScenarioSpec::default(), None)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&["a="]),
            "scenario \"a\": no function (set function=NAME or a default)"
        );
        assert_eq!(
            err(&["a=function=f", "a=function=g"]),
            "scenario \"a\": the name is used twice"
        );
        assert_eq!(
            err(&["a=function=f,rate=1,concurrency=2"]),
            "scenario \"a\": give concurrency or rate, not both"
        );
        assert_eq!(
            err(&["a=function=f,duration=soon"]),
            "scenario \"a\": bad duration \"soon\": expected a number with a unit (us, ms, s, m, h), like 500ms or 1.5s"
        );
        assert_eq!(
            err(&["a=function=f,requests=0"]),
            "scenario \"a\": the run must measure at least one request (requests or duration is 0)"
        );
    }

    #[test]
    fn reads_a_toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmp.toml");
        std::fs::write(
            &path,
            r#"
rounds = 3
baseline = "warm"
[defaults]
function = "hello"
requests = 4
[[scenario]]
name = "warm"
[[scenario]]
name = "boot"
cold = "boot"
[[scenario]]
name = "fork"
exec = ["echo", "12"]
"#,
        )
        .unwrap();
        let file = CompareFile::read(&path).unwrap();
        assert_eq!(file.rounds, Some(3));
        assert_eq!(file.baseline.as_deref(), Some("warm"));
        let built = build_all(&file.scenario, &file.defaults, None).unwrap();
        let names: Vec<_> = built.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["warm", "boot", "fork"]);
        assert!(matches!(&built[2].kind, ScenarioKind::Exec { argv } if argv == &["echo", "12"]));

        std::fs::write(&path, "[[scenario]]\nname = \"x\"\ncolour = 1\n").unwrap();
        let err = CompareFile::read(&path).unwrap_err().to_string();
        assert!(err.starts_with("bad comparison file"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }
}
