//! Turns a [`VmConfig`] into QEMU's command line.

use std::ffi::OsString;

use crate::accel::Accelerator;
use crate::config::VmConfig;

/// The arguments (without the binary) for `qemu-system-x86_64`.
pub fn qemu_args(cfg: &VmConfig, accel: Accelerator) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    let mem = format!("{}M", cfg.memory.size_mib);
    // acpi=off: the lean kernel has no ACPI/PCI; QEMU then appends virtio_mmio.device= entries to
    // the command line itself. No option ROMs. The RTC stays: it is where the guest reads the
    // wall clock at boot. The PIT stays: without it this kernel
    // cannot calibrate its timers under TCG and sleeps in early boot (IP-Config) never end.
    let mut machine = "microvm,acpi=off,x-option-roms=off".to_owned();
    if cfg.memory.file.is_some() {
        machine.push_str(",memory-backend=mem");
    }
    push(&["-machine", &machine]);
    match accel {
        Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accelerator::Tcg => {
            let tcg = format!("tcg,tb-size={}", cfg.tcg_tb_size_mib);
            push(&["-accel", &tcg, "-cpu", "max"]);
        }
    }
    push(&["-m", &mem, "-smp", &cfg.vcpus.to_string()]);
    if let Some(file) = &cfg.memory.file {
        // A private mapping is a copy-on-write view of a file others use (a template's RAM):
        // QEMU opens it read-only (`rom=off` keeps the guest's view writable), so nothing in
        // this QEMU, free page reporting's hole punching included, can change the file.
        let share = if cfg.memory.private { "off,readonly=on,rom=off" } else { "on" };
        let backend = format!(
            "memory-backend-file,id=mem,size={mem},mem-path={},share={share}",
            file.display()
        );
        push(&["-object", &backend]);
    }
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    if cfg.jail.is_some() {
        push(&["-sandbox", crate::jail::SECCOMP_POLICY]);
    }
    push(&["-kernel", &cfg.kernel.display().to_string(), "-append", &cfg.cmdline]);
    // Appending, so the engine can truncate a full log while QEMU goes on writing at its end.
    let serial = format!("file,id=console,path={},append=on", cfg.serial_log.display());
    push(&["-chardev", &serial, "-serial", "chardev:console"]);
    for (i, disk) in cfg.disks.iter().enumerate() {
        // A writable disk passes the guest's discards through (`discard=unmap`): blocks the
        // guest frees are given back to the host (holes punched in a raw file, clusters freed
        // in a qcow2 overlay), so `rm` in the guest shrinks the file.
        let drive = format!(
            "id=disk{i},file={},format={},if=none,read-only={},cache={}{}",
            disk.path.display(),
            VmConfig::disk_format(disk),
            if disk.read_only { "on" } else { "off" },
            cfg.disk_cache.as_str(),
            if disk.read_only { "" } else { ",discard=unmap" },
        );
        let device = format!("virtio-blk-device,drive=disk{i}");
        push(&["-drive", &drive, "-device", &device]);
    }
    if let Some(net) = &cfg.net {
        let netdev = format!("tap,id=net0,fd={},vhost=off", net.tap_fd);
        let device = format!("virtio-net-device,netdev=net0,mac={}", net.mac);
        push(&["-netdev", &netdev, "-device", &device]);
    }
    // After the disks and the network: its virtio-mmio slot comes after theirs.
    if let Some(balloon) = &cfg.balloon {
        let reporting = if balloon.free_page_reporting { "on" } else { "off" };
        let device = format!("virtio-balloon-device,free-page-reporting={reporting}");
        push(&["-device", &device]);
    }
    // After the balloon, for the same reason: older states (without it) keep their slots.
    if cfg.rng {
        push(&["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
        push(&["-device", "virtio-rng-device,rng=rng0"]);
    }
    let qmp = format!("unix:{},server=on,wait=off", cfg.qmp_socket.display());
    push(&["-qmp", &qmp]);
    // A jailed QEMU waits, paused, until the parent has moved it into its cgroups.
    if cfg.start_paused || cfg.joins_cgroups_after_spawn() {
        push(&["-S"]);
    }
    if cfg.incoming {
        // Deferred, so the migration capabilities can be set over QMP before the state loads.
        push(&["-incoming", "defer"]);
    }
    args
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{Disk, DiskFormat, NetDevice};

    fn joined(cfg: &VmConfig, accel: Accelerator) -> String {
        qemu_args(cfg, accel)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn base() -> VmConfig {
        VmConfig::new(
            PathBuf::from("/k/vmlinux"),
            "console=ttyS0 init=/usr/local/bin/lohar".into(),
            PathBuf::from("/vm/serial.log"),
            PathBuf::from("/vm/qmp.sock"),
        )
    }

    #[test]
    fn minimal_tcg_command_line() {
        let line = joined(&base(), Accelerator::Tcg);
        assert!(line.starts_with("-machine microvm,acpi=off,"), "{line}");
        assert!(line.contains("-accel tcg,tb-size=64 -cpu max"));
        assert!(line.contains("-m 256M -smp 1"));
        assert!(
            line.contains("-kernel /k/vmlinux -append console=ttyS0 init=/usr/local/bin/lohar")
        );
        assert!(line.contains(
            "-chardev file,id=console,path=/vm/serial.log,append=on -serial chardev:console"
        ));
        assert!(line.contains("-qmp unix:/vm/qmp.sock,server=on,wait=off"));
        assert!(!line.contains("memory-backend"));
        assert!(!line.contains("-netdev"));
        assert!(!line.contains(" -S"));
        assert!(!line.contains("-sandbox"));
        assert!(!line.contains("balloon"));
    }

    #[test]
    fn the_balloon_comes_after_every_other_device() {
        let mut cfg = base();
        cfg.disks.push(Disk {
            path: "/vm/root.qcow2".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
        });
        cfg.net = Some(NetDevice { tap_fd: 3, mac: "52:54:00:12:34:56".into() });
        for (reporting, text) in [(true, "on"), (false, "off")] {
            cfg.balloon = Some(crate::config::Balloon { free_page_reporting: reporting });
            let line = joined(&cfg, Accelerator::Tcg);
            let balloon = format!("-device virtio-balloon-device,free-page-reporting={text}");
            let at = line.find(&balloon).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(line.rfind("-device "), Some(at), "{line}");
            assert!(line.find("virtio-net-device").unwrap() < at, "{line}");
            assert!(line.find("virtio-blk-device").unwrap() < at, "{line}");
        }
    }

    #[test]
    fn the_rng_is_the_last_device_fed_by_urandom() {
        let mut cfg = base();
        cfg.disks.push(Disk {
            path: "/vm/root.qcow2".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
        });
        cfg.net = Some(NetDevice { tap_fd: 3, mac: "52:54:00:12:34:56".into() });
        cfg.balloon = Some(crate::config::Balloon { free_page_reporting: true });
        assert!(!joined(&cfg, Accelerator::Tcg).contains("rng"));
        cfg.rng = true;
        let line = joined(&cfg, Accelerator::Tcg);
        let rng = "-object rng-random,id=rng0,filename=/dev/urandom \
                   -device virtio-rng-device,rng=rng0";
        let at = line.find(rng).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(line.rfind("-device "), line.find("-device virtio-rng-device"), "{line}");
        assert!(line.find("virtio-balloon-device").unwrap() < at, "{line}");
    }

    #[test]
    fn a_jailed_qemu_gets_the_strictest_seccomp_policy() {
        let mut cfg = base();
        cfg.jail = Some(crate::jail::Jail {
            uid: 1_000_002,
            gid: 1_000_002,
            mount_point: "/vm/jail".into(),
            binds: Vec::new(),
            cgroup_procs: Vec::new(),
            groups: Vec::new(),
        });
        let line = joined(&cfg, Accelerator::Tcg);
        assert!(line.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(!line.contains(" -S"));
        // Moved into its cgroups after the spawn: it waits paused until then.
        if let Some(jail) = cfg.jail.as_mut() {
            jail.cgroup_procs.push("/sys/fs/cgroup/memory/bhatti/x/cgroup.procs".into());
        }
        assert!(joined(&cfg, Accelerator::Tcg).contains(" -S"));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let line = joined(&base(), Accelerator::Kvm);
        assert!(line.contains("-accel kvm -cpu host"));
        assert!(!line.contains("tcg"));
    }

    #[test]
    fn file_backed_memory_disks_net_and_incoming() {
        let mut cfg = base();
        cfg.memory.size_mib = 1024;
        cfg.memory.file = Some(PathBuf::from("/vm/ram"));
        cfg.vcpus = 2;
        cfg.disks.push(Disk {
            path: "/vm/root.qcow2".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
        });
        cfg.disks.push(Disk {
            path: "/vm/config.ext4".into(),
            format: DiskFormat::Raw,
            read_only: true,
        });
        cfg.net = Some(NetDevice { tap_fd: 3, mac: "52:54:00:12:34:56".into() });
        cfg.incoming = true;
        let line = joined(&cfg, Accelerator::Tcg);
        assert!(line.contains(",memory-backend=mem"));
        assert!(
            line.contains(
                "-object memory-backend-file,id=mem,size=1024M,mem-path=/vm/ram,share=on"
            )
        );
        assert!(line.contains("-m 1024M -smp 2"));
        assert!(
            line.contains("-drive id=disk0,file=/vm/root.qcow2,format=qcow2,if=none,read-only=off")
        );
        assert!(line.contains("-device virtio-blk-device,drive=disk0"));
        assert!(
            line.contains("-drive id=disk1,file=/vm/config.ext4,format=raw,if=none,read-only=on")
        );
        // Discards reach the writable overlay only.
        assert!(
            line.contains("format=qcow2,if=none,read-only=off,cache=")
                && line.contains(",discard=unmap -device virtio-blk-device,drive=disk0")
        );
        assert!(
            !line.contains("read-only=on,cache=unsafe,discard")
                && line.matches("discard=unmap").count() == 1
        );
        assert!(line.contains("-netdev tap,id=net0,fd=3,vhost=off -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"));
        assert!(line.ends_with("-incoming defer"));
        cfg.memory.private = true;
        // Copy-on-write over a file opened read-only: nothing this QEMU does can change it.
        assert!(joined(&cfg, Accelerator::Tcg).contains("share=off,readonly=on,rom=off"));
    }
}
