//! What is wrong with a config: every problem, each at its place in lbd.yaml
//! or in the KubeProxyConfiguration lbd.yaml names.

use std::fmt;

use super::yaml::Pos;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file it is in: lbd.yaml, or the KubeProxyConfiguration it names.
    pub path: String,
    /// 1-based. 0 (with `col` 0) when the problem is the file as a whole,
    /// which has no position to show: it cannot be read.
    pub line: u64,
    pub col: u64,
    pub message: String,
}

impl Problem {
    pub fn at(path: &str, pos: Pos, message: impl Into<String>) -> Self {
        Problem {
            path: path.to_string(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }

    /// A problem with the whole file, printed without a position.
    pub fn whole_file(path: &str, message: impl Into<String>) -> Self {
        Self::at(path, Pos::default(), message)
    }
}

/// `PATH:LINE:COL: message`, or `PATH: message` for a problem with no
/// position.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path, self.line, self.col, self.message
            )
        }
    }
}

/// Every problem found loading one config, one line each: those in lbd.yaml
/// first, then those in its KubeProxyConfiguration, each file's in the order
/// of their position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file that was loaded (lbd.yaml).
    pub path: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// `path` could not be read at all.
    pub fn unreadable(path: &str, error: &std::io::Error) -> Self {
        ConfigError {
            path: path.to_string(),
            problems: vec![Problem::whole_file(path, format!("cannot read: {error}"))],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Sorts one file's problems by position; problems at one place keep the
/// order they were found in.
pub(super) fn sort_by_position(problems: &mut [Problem]) {
    problems.sort_by_key(|p| (p.line, p.col));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_print_with_their_file_and_position() {
        let e = ConfigError {
            path: "lbd.yaml".into(),
            problems: vec![
                Problem::at("lbd.yaml", Pos { line: 3, col: 7 }, "bad"),
                Problem::at("/kp.yaml", Pos { line: 1, col: 1 }, "worse"),
            ],
        };
        assert_eq!(e.to_string(), "lbd.yaml:3:7: bad\n/kp.yaml:1:1: worse");
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(
            ConfigError::unreadable("/x.yaml", &io).to_string(),
            format!("/x.yaml: cannot read: {io}")
        );
    }
}
