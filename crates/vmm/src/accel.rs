//! Choosing the accelerator: KVM only where it really works, TCG everywhere else.

use std::fmt;

use crate::error::VmmError;

/// What the user asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` opens and the CPU advertises `vmx` or `svm`, otherwise TCG.
    #[default]
    Auto,
    /// KVM or an error.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// What a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

impl std::str::FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!("unknown accelerator {other:?} (auto, kvm or tcg)")),
        }
    }
}

/// True when KVM can run guests: `/dev/kvm` opens read-write and the CPU has vmx or svm. A
/// `/dev/kvm` without those flags exists on some cloud VMs, and a guest never boots there.
pub fn kvm_usable() -> bool {
    let opens = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    opens && cpu_has_virtualization(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// True if any `flags` line of a /proc/cpuinfo text lists `vmx` or `svm`.
pub fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

impl Accel {
    /// Resolves the request against this host. `Auto` falling back to TCG logs one notice.
    pub fn resolve(self) -> Result<Accelerator, VmmError> {
        match self {
            Accel::Tcg => Ok(Accelerator::Tcg),
            Accel::Kvm if kvm_usable() => Ok(Accelerator::Kvm),
            Accel::Kvm => Err(VmmError::AccelUnavailable("kvm")),
            Accel::Auto if kvm_usable() => Ok(Accelerator::Kvm),
            Accel::Auto => {
                static NOTICE: std::sync::Once = std::sync::Once::new();
                NOTICE.call_once(|| {
                    tracing::info!("KVM is not usable here (no working /dev/kvm with vmx/svm): using TCG software emulation");
                });
                Ok(Accelerator::Tcg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtualization_flags_are_detected_only_in_flags_lines() {
        assert!(cpu_has_virtualization("processor : 0\nflags : fpu vme vmx sse\n"));
        assert!(cpu_has_virtualization("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_virtualization("flags : fpu vme sse hypervisor\n"));
        assert!(!cpu_has_virtualization("model name : vmx-like cpu\nflags : fpu\n"));
        assert!(!cpu_has_virtualization(""));
    }

    #[test]
    fn tcg_always_resolves_and_names_parse() {
        assert_eq!(Accel::Tcg.resolve().unwrap(), Accelerator::Tcg);
        assert_eq!("auto".parse::<Accel>().unwrap(), Accel::Auto);
        assert_eq!("kvm".parse::<Accel>().unwrap(), Accel::Kvm);
        assert!("xen".parse::<Accel>().is_err());
    }

    #[test]
    fn auto_matches_the_host() {
        let expected = if kvm_usable() { Accelerator::Kvm } else { Accelerator::Tcg };
        assert_eq!(Accel::Auto.resolve().unwrap(), expected);
        if !kvm_usable() {
            assert!(matches!(Accel::Kvm.resolve(), Err(VmmError::AccelUnavailable("kvm"))));
        }
    }
}
