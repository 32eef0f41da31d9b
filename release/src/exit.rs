//! The exit codes of `lazyrec-release`, one definition for the binary and the scripts
//! (`lazyrec-release exit-codes` prints them as shell assignments: `eval "$(… exit-codes)"`).

/// How a `lazyrec-release` command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; for `evaluate`, the decision was to promote.
    Success = 0,
    /// Any failure that is not bad input (the one-line error says what).
    Failure = 1,
    /// Bad input: a flag, a release id, a state that does not allow the command.
    BadInput = 2,
    /// `evaluate`: no decision yet, look again later.
    Continue = 3,
    /// `evaluate`: abort; `gate`/`start`: rejected by the offline gate.
    Stop = 4,
}

impl Exit {
    /// Every code, with the shell name the scripts use.
    pub const ALL: [(Exit, &'static str); 5] = [
        (Exit::Success, "EXIT_SUCCESS"),
        (Exit::Failure, "EXIT_FAILURE"),
        (Exit::BadInput, "EXIT_BAD_INPUT"),
        (Exit::Continue, "EXIT_CONTINUE"),
        (Exit::Stop, "EXIT_STOP"),
    ];

    /// The process exit code.
    pub fn code(self) -> std::process::ExitCode {
        std::process::ExitCode::from(self as u8)
    }

    /// `NAME=code` lines for a shell's `eval`.
    pub fn shell() -> String {
        Self::ALL.iter().map(|(e, name)| format!("{name}={}\n", *e as u8)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_read_the_same_codes() {
        assert_eq!(Exit::shell(), "EXIT_SUCCESS=0\nEXIT_FAILURE=1\nEXIT_BAD_INPUT=2\nEXIT_CONTINUE=3\nEXIT_STOP=4\n");
    }
}
