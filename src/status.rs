//! Statuses, spelled once: runs, steps, step events and queued commands, and the error types of
//! failed commands. Each status is written to SQL, JSON and templates as its [`as_str`] spelling
//! (snake_case, which is also its serde name), and parsed back with [`FromStr`].
//!
//! [`as_str`]: RunStatus::as_str

use std::{convert::Infallible, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A status text that names no status of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} status `{value}`")]
pub struct ParseStatusError {
    /// `run`, `step`, `step event` or `command`.
    pub kind: &'static str,
    pub value: String,
}

/// A status enum with its one spelling per variant, `Display`, `FromStr` and the list of all.
macro_rules! status_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            #[allow(dead_code)] // not every enum's list is iterated outside the tests
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling in SQL, JSON and templates.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStatusError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(ParseStatusError {
                        kind: $kind,
                        value: s.to_owned(),
                    }),
                }
            }
        }
    };
}

status_enum! {
    /// Where a run stands (in its record, and in `RunOutcome.status`).
    RunStatus("run") {
        /// Recorded but not started.
        Queued = "queued",
        Running = "running",
        /// Paused at an `approve` step.
        WaitingApproval = "waiting_approval",
        /// An operator asked it to stop; it stops before its next step.
        CancelRequested = "cancel_requested",
        Succeeded = "succeeded",
        Failed = "failed",
        /// The playbook's deadline passed.
        TimedOut = "timed_out",
        Cancelled = "cancelled",
        /// The process running it stopped, and its playbook says not to resume.
        Interrupted = "interrupted",
        /// A dry run that planned every step.
        Planned = "planned",
        /// A trigger that a guard or the pause held back: recorded with the reason, never run.
        Skipped = "skipped",
    }
}

impl RunStatus {
    /// Whether the run has ended; a run that has not may still be running somewhere (or was,
    /// when its process died).
    pub const fn is_final(self) -> bool {
        !matches!(
            self,
            RunStatus::Running
                | RunStatus::WaitingApproval
                | RunStatus::CancelRequested
                | RunStatus::Queued
        )
    }

    /// Whether an operator may ask the run to stop.
    pub const fn is_cancellable(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::WaitingApproval | RunStatus::Queued
        )
    }

    /// Whether the run did what was asked: succeeded, or planned every step of a dry run.
    pub const fn is_success(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Planned)
    }
}

status_enum! {
    /// How a step ended: in its attempt records and in the template value `steps.<id>.status`.
    StepStatus("step") {
        Succeeded = "succeeded",
        Failed = "failed",
        /// Its `when` was false.
        Skipped = "skipped",
        /// A dry run rendered it without running it.
        Planned = "planned",
        /// A check of an `until` step whose condition did not hold: the attempt ran, the step
        /// is not done. Only attempt records have it.
        Polled = "polled",
    }
}

status_enum! {
    /// What a step event reports to whoever watches a run (the CLI prints these).
    StepEventStatus("step event") {
        Started = "started",
        Succeeded = "succeeded",
        Failed = "failed",
        Skipped = "skipped",
        Planned = "planned",
        /// A dry run's rendered input: what the step would do.
        Plan = "plan",
        /// An `approve` step waits for an operator.
        Waiting = "waiting",
        /// A check of an `until` step whose condition did not hold yet; the step polls again.
        Polled = "polled",
    }
}

impl From<StepStatus> for StepEventStatus {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Succeeded => StepEventStatus::Succeeded,
            StepStatus::Failed => StepEventStatus::Failed,
            StepStatus::Skipped => StepEventStatus::Skipped,
            StepStatus::Planned => StepEventStatus::Planned,
            // A poll is not the step's end: the step goes on.
            StepStatus::Polled => StepEventStatus::Started,
        }
    }
}

status_enum! {
    /// Where a queued command stands (`command_queue.status`).
    CommandStatus("command") {
        /// Waiting for its `run_at` and a worker.
        Pending = "pending",
        /// Leased to a worker.
        Processing = "processing",
        Completed = "completed",
        /// Failed for good: out of retries, or not retryable.
        Dlq = "dlq",
    }
}

/// Why a command failed, in the seed's exception-like names (`command_queue.error_type`, the
/// `error_type` label of the worker metrics). Names the code does not write survive as `Other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Bad input: a retry cannot help.
    ValidationException,
    TimeoutException,
    NetworkException,
    SqlException,
    UnknownCommandTypeException,
    PanicException,
    /// A playbook run could not start or finish.
    RunbookException,
    /// The worker holding the command stopped renewing its lease.
    LeaseExpiredException,
    Other(String),
}

impl ErrorType {
    /// Every named variant (not `Other`).
    pub const NAMED: &'static [ErrorType] = &[
        ErrorType::ValidationException,
        ErrorType::TimeoutException,
        ErrorType::NetworkException,
        ErrorType::SqlException,
        ErrorType::UnknownCommandTypeException,
        ErrorType::PanicException,
        ErrorType::RunbookException,
        ErrorType::LeaseExpiredException,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            ErrorType::ValidationException => "ValidationException",
            ErrorType::TimeoutException => "TimeoutException",
            ErrorType::NetworkException => "NetworkException",
            ErrorType::SqlException => "SqlException",
            ErrorType::UnknownCommandTypeException => "UnknownCommandTypeException",
            ErrorType::PanicException => "PanicException",
            ErrorType::RunbookException => "RunbookException",
            ErrorType::LeaseExpiredException => "LeaseExpiredException",
            ErrorType::Other(s) => s,
        }
    }

    /// Whether the type itself rules a retry out: a `ValidationException` (bad input) never
    /// succeeds on a retry. Any other type may; the handler that raises it decides each time.
    pub fn is_retryable(&self) -> bool {
        *self != ErrorType::ValidationException
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ErrorType {
    fn from(s: &str) -> Self {
        ErrorType::NAMED
            .iter()
            .find(|t| t.as_str() == s)
            .cloned()
            .unwrap_or_else(|| ErrorType::Other(s.to_owned()))
    }
}

impl FromStr for ErrorType {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ErrorType::from(s))
    }
}

impl Serialize for ErrorType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorType::from(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Display/FromStr and serde agree on every variant's spelling, and both round-trip.
    fn round_trips<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + fmt::Display + FromStr + Serialize,
        T: for<'de> Deserialize<'de>,
        <T as FromStr>::Err: fmt::Debug,
    {
        for &v in all {
            let text = v.to_string();
            assert_eq!(text.parse::<T>().unwrap(), v, "{text}");
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json, serde_json::Value::String(text.clone()), "{v:?}");
            assert_eq!(serde_json::from_value::<T>(json).unwrap(), v);
        }
    }

    #[test]
    fn every_status_round_trips() {
        round_trips(RunStatus::ALL);
        round_trips(StepStatus::ALL);
        round_trips(StepEventStatus::ALL);
        round_trips(CommandStatus::ALL);
        assert_eq!(RunStatus::WaitingApproval.as_str(), "waiting_approval");
        assert_eq!(CommandStatus::Dlq.as_str(), "dlq");
        assert_eq!(StepStatus::Succeeded.as_str(), "succeeded");
    }

    #[test]
    fn unknown_statuses_are_named_in_the_error() {
        let e = "ok".parse::<StepStatus>().unwrap_err();
        assert_eq!(e.to_string(), "unknown step status `ok`");
        let e = "done".parse::<RunStatus>().unwrap_err();
        assert_eq!(e.to_string(), "unknown run status `done`");
        assert!(serde_json::from_str::<CommandStatus>("\"Pending\"").is_err());
    }

    #[test]
    fn final_and_cancellable_runs() {
        let open: Vec<RunStatus> = RunStatus::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(
            open,
            [
                RunStatus::Queued,
                RunStatus::Running,
                RunStatus::WaitingApproval,
                RunStatus::CancelRequested
            ]
        );
        assert!(!RunStatus::CancelRequested.is_cancellable());
        assert!(RunStatus::WaitingApproval.is_cancellable());
        assert!(RunStatus::ALL
            .iter()
            .all(|s| !s.is_cancellable() || !s.is_final()));
        assert!(RunStatus::Planned.is_success() && !RunStatus::Failed.is_success());
    }

    #[test]
    fn step_events_cover_step_statuses() {
        // A poll is not a step's end, so no event reports it.
        for &s in StepStatus::ALL.iter().filter(|s| **s != StepStatus::Polled) {
            assert_eq!(StepEventStatus::from(s).as_str(), s.as_str());
        }
        assert_eq!(
            StepEventStatus::from(StepStatus::Polled),
            StepEventStatus::Started
        );
    }

    #[test]
    fn error_types_round_trip_and_unknown_ones_survive() {
        for t in ErrorType::NAMED {
            let text = t.to_string();
            assert_eq!(text.parse::<ErrorType>().unwrap(), *t);
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, serde_json::Value::String(text));
            assert_eq!(serde_json::from_value::<ErrorType>(json).unwrap(), *t);
        }
        let other: ErrorType = "DeadlockException".parse().unwrap();
        assert_eq!(other, ErrorType::Other("DeadlockException".into()));
        assert_eq!(other.to_string(), "DeadlockException");
        let json = serde_json::to_value(&other).unwrap();
        assert_eq!(serde_json::from_value::<ErrorType>(json).unwrap(), other);
        assert!(!ErrorType::ValidationException.is_retryable());
        assert!(ErrorType::TimeoutException.is_retryable());
        assert!(other.is_retryable());
    }
}
