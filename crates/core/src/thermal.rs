//! The thermal state of a sandbox's VM: the engine's truth about the machine.

use serde::{Deserialize, Serialize};

/// Thermal state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Thermal {
    /// QEMU running.
    Hot,
    /// QEMU alive, vCPUs paused, memory kept.
    Warm,
    /// QEMU gone, memory freed; the sandbox wakes from its files.
    Cold,
    /// QEMU ended on its own (killed, crashed); `start` boots the sandbox from its disk.
    Failed,
}

impl Thermal {
    /// Every state, for tables and tests.
    pub const ALL: [Thermal; 4] = [Thermal::Hot, Thermal::Warm, Thermal::Cold, Thermal::Failed];

    /// The stored and displayed text.
    pub fn as_str(self) -> &'static str {
        match self {
            Thermal::Hot => "hot",
            Thermal::Warm => "warm",
            Thermal::Cold => "cold",
            Thermal::Failed => "failed",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Thermal::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether QEMU is alive (hot or warm).
    pub fn is_alive(self) -> bool {
        matches!(self, Thermal::Hot | Thermal::Warm)
    }
}

impl std::fmt::Display for Thermal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_matches_serde() {
        for t in Thermal::ALL {
            assert_eq!(Thermal::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!(Thermal::parse("running"), None);
    }
}
