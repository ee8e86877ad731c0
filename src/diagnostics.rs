//! Validation findings with the place they point at, printed as `path:line:col: message`.

use std::{fmt, path::PathBuf};

use serde::Serialize;

/// One problem found while loading or compiling a playbook or the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        path: impl Into<PathBuf>,
        (line, col): (usize, usize),
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            path: path.into(),
            line,
            col,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line.max(1),
            self.col.max(1),
            self.message
        )
    }
}
