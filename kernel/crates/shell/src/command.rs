//! What a typed line asks for. Parsing checks the shape of every argument (numbers, sizes,
//! counts within bounds); whether an instance exists or a CPU may move is for the kernel to
//! say, which knows.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub use mk_ids::InstanceId;

/// A command the shell runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help [COMMAND]`
    Help(Option<&'static CommandInfo>),
    /// `instances`
    Instances,
    /// `stats`
    Stats,
    /// `ping INST [COUNT]`
    Ping { instance: InstanceId, count: u32 },
    /// `cpu move CPU INST` (CPU is an APIC ID)
    CpuMove { apic: u32, to: InstanceId },
    /// `mem move SIZE FROM TO`
    MemMove {
        bytes: u64,
        from: InstanceId,
        to: InstanceId,
    },
    /// `irq route LINE INST`
    IrqRoute { line: u32, to: InstanceId },
    /// `irq mask LINE`, `irq unmask LINE`
    IrqMask { line: u32, mask: bool },
    /// `shutdown INST`
    Shutdown { instance: InstanceId },
    /// `respawn INST`
    Respawn { instance: InstanceId },
    /// `crash INST`
    Crash { instance: InstanceId },
    /// `bench [ROUNDS] [INST]`
    Bench { rounds: u32, instance: InstanceId },
    /// `ps`: the tasks of every instance.
    Ps,
    /// `spawn INST [--irq LINE] [--io BASE:LEN] [--mmio PHYS:PAGES] PROGRAM [ARGS...]`:
    /// `line` is the program and its arguments, `grants` the devices it gets (in order).
    Spawn {
        instance: InstanceId,
        line: String,
        grants: Vec<GrantSpec>,
    },
    /// `caps INST TASK`: the capabilities of a task.
    Caps { instance: InstanceId, task: u64 },
    /// `kill INST TASK` (TASK as `ps` prints it, `t3.1`, or the raw number).
    Kill { instance: InstanceId, task: u64 },
    /// `programs`
    Programs,
}

/// A device a spawned task gets (`spawn --irq/--io/--mmio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSpec {
    Irq(u8),
    IoPorts { base: u16, len: u16 },
    Mmio { phys: u64, pages: u32 },
}

/// Most `--irq/--io/--mmio` options one `spawn` takes.
pub const MAX_GRANTS: usize = 4;

/// One command's name, usage and one-line description (what `help` prints).
#[derive(Debug, PartialEq, Eq)]
pub struct CommandInfo {
    pub name: &'static str,
    pub usage: &'static str,
    pub about: &'static str,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CommandInfo] = &[
    CommandInfo {
        name: "help",
        usage: "help [COMMAND]",
        about: "list the commands, or explain one",
    },
    CommandInfo {
        name: "instances",
        usage: "instances",
        about: "table of instances: state, CPUs, memory, uptime, last heartbeat",
    },
    CommandInfo {
        name: "stats",
        usage: "stats",
        about: "message counters of every mailbox (sender -> receiver)",
    },
    CommandInfo {
        name: "ping",
        usage: "ping INST [COUNT]",
        about: "round trips to instance INST (COUNT 1..1000, default 4)",
    },
    CommandInfo {
        name: "cpu",
        usage: "cpu move CPU INST",
        about: "move the CPU with APIC ID CPU into instance INST",
    },
    CommandInfo {
        name: "mem",
        usage: "mem move SIZE FROM TO",
        about: "move SIZE bytes (e.g. 16M, multiple of 2M) of memory from FROM to TO",
    },
    CommandInfo {
        name: "irq",
        usage: "irq route LINE INST | irq mask LINE | irq unmask LINE",
        about: "hand IO APIC line LINE to instance INST, or mask/unmask it at its owner",
    },
    CommandInfo {
        name: "shutdown",
        usage: "shutdown INST",
        about: "stop instance INST cleanly; its resources go back to instance 0",
    },
    CommandInfo {
        name: "respawn",
        usage: "respawn INST",
        about: "start a stopped or dead instance INST again",
    },
    CommandInfo {
        name: "crash",
        usage: "crash INST",
        about: "make instance INST panic, to watch failure detection",
    },
    CommandInfo {
        name: "bench",
        usage: "bench [ROUNDS] [INST]",
        about: "in-kernel benchmark against INST (default 1): round trips, throughput, op costs; ROUNDS 1..100000 (200)",
    },
    CommandInfo {
        name: "ps",
        usage: "ps",
        about: "tasks of every instance: id, program, state, CPU, CPU time",
    },
    CommandInfo {
        name: "spawn",
        usage: "spawn INST [--irq LINE] [--io BASE:LEN] [--mmio PHYS:PAGES] PROGRAM [ARGS...]",
        about: "start PROGRAM (from the ramdisk) as a task of instance INST, holding the devices named (capability handles 1, 2, ... in order)",
    },
    CommandInfo {
        name: "caps",
        usage: "caps INST TASK",
        about: "the capabilities of task TASK (e.g. t3.1) of instance INST: handle, kind, rights, object",
    },
    CommandInfo {
        name: "kill",
        usage: "kill INST TASK",
        about: "end task TASK (as ps prints it, e.g. t3.1) of instance INST",
    },
    CommandInfo {
        name: "programs",
        usage: "programs",
        about: "the user programs in the boot ramdisk, with their sizes",
    },
];

/// A task id as `ps` prints it (`t3.1`: slot 3, generation 1), or its raw number.
pub fn parse_task(text: &str) -> Option<u64> {
    if let Some(rest) = text.strip_prefix('t') {
        let (index, generation) = rest.split_once('.')?;
        let index: u32 = index.parse().ok()?;
        let generation: u32 = generation.parse().ok()?;
        return Some(u64::from(generation) << 32 | u64::from(index));
    }
    parse_number(text)
}

/// A line the shell cannot run: what is wrong, and the usage of the command (if one was named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    pub usage: Option<&'static str>,
}

fn info(name: &str) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.name == name)
}

fn usage_error(cmd: &'static CommandInfo, message: String) -> UsageError {
    UsageError {
        message,
        usage: Some(cmd.usage),
    }
}

/// Parses one line (already trimmed by the editor or not). An empty line is `Ok(None)`.
pub fn parse(line: &str) -> Result<Option<Command>, UsageError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else {
        return Ok(None);
    };
    let Some(cmd) = info(name) else {
        return Err(UsageError {
            message: format!("unknown command '{name}' (type 'help' for the list)"),
            usage: None,
        });
    };
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(usage_error(
                cmd,
                format!("'{name}' takes {n} argument(s), got {}", args.len()),
            ))
        }
    };
    let num = |what: &str, text: &str, max: u64| -> Result<u64, UsageError> {
        parse_number(text)
            .filter(|&n| n <= max)
            .ok_or_else(|| usage_error(cmd, format!("{what} '{text}' is not a number 0..={max}")))
    };
    let instance = |text: &str| num("instance", text, 63).map(|n| InstanceId::new(n as u16));
    let task = |text: &str| {
        parse_task(text)
            .ok_or_else(|| usage_error(cmd, format!("task '{text}' is not a task id (e.g. t3.1)")))
    };
    let parsed = match name {
        "help" => match args {
            [] => Command::Help(None),
            [topic] => Command::Help(Some(
                info(topic).ok_or_else(|| usage_error(cmd, format!("no command '{topic}'")))?,
            )),
            _ => return Err(usage_error(cmd, String::from("too many arguments"))),
        },
        "instances" => arity(0).map(|()| Command::Instances)?,
        "stats" => arity(0).map(|()| Command::Stats)?,
        "programs" => arity(0).map(|()| Command::Programs)?,
        "ping" => match args {
            [inst] => Command::Ping {
                instance: instance(inst)?,
                count: 4,
            },
            [inst, count] => Command::Ping {
                instance: instance(inst)?,
                count: num("count", count, 1000).and_then(|c| positive(cmd, "count", c))? as u32,
            },
            _ => return Err(usage_error(cmd, String::from("expected INST [COUNT]"))),
        },
        "cpu" => match args {
            ["move", cpu, to] => Command::CpuMove {
                apic: num("CPU", cpu, u64::from(u32::MAX))? as u32,
                to: instance(to)?,
            },
            [sub, ..] if *sub != "move" => {
                return Err(usage_error(cmd, format!("no subcommand 'cpu {sub}'")));
            }
            _ => return Err(usage_error(cmd, String::from("expected: move CPU INST"))),
        },
        "mem" => match args {
            ["move", size, from, to] => Command::MemMove {
                bytes: parse_size(size).ok_or_else(|| {
                    usage_error(
                        cmd,
                        format!("size '{size}' is not a size (e.g. 4096, 16M, 1G)"),
                    )
                })?,
                from: instance(from)?,
                to: instance(to)?,
            },
            [sub, ..] if *sub != "move" => {
                return Err(usage_error(cmd, format!("no subcommand 'mem {sub}'")));
            }
            _ => {
                return Err(usage_error(
                    cmd,
                    String::from("expected: move SIZE FROM TO"),
                ));
            }
        },
        "irq" => match args {
            ["route", line, to] => Command::IrqRoute {
                line: num("line", line, 255)? as u32,
                to: instance(to)?,
            },
            [sub @ ("mask" | "unmask"), line] => Command::IrqMask {
                line: num("line", line, 255)? as u32,
                mask: *sub == "mask",
            },
            [sub, ..] if !matches!(*sub, "route" | "mask" | "unmask") => {
                return Err(usage_error(cmd, format!("no subcommand 'irq {sub}'")));
            }
            _ => return Err(usage_error(cmd, String::from("wrong arguments"))),
        },
        "shutdown" | "respawn" | "crash" => {
            arity(1)?;
            let instance = instance(args[0])?;
            match name {
                "shutdown" => Command::Shutdown { instance },
                "respawn" => Command::Respawn { instance },
                _ => Command::Crash { instance },
            }
        }
        "bench" => {
            let rounds = match args.first() {
                None => 200,
                Some(r) => {
                    num("rounds", r, 100_000).and_then(|c| positive(cmd, "rounds", c))? as u32
                }
            };
            match args {
                [] | [_] => Command::Bench {
                    rounds,
                    instance: InstanceId::new(1),
                },
                [_, inst] => Command::Bench {
                    rounds,
                    instance: instance(inst)?,
                },
                _ => return Err(usage_error(cmd, String::from("too many arguments"))),
            }
        }
        "ps" => {
            arity(0)?;
            Command::Ps
        }
        "spawn" => match args {
            [inst, rest @ ..] if !rest.is_empty() => {
                let mut rest = rest;
                let mut grants = Vec::new();
                while let [flag @ ("--irq" | "--io" | "--mmio"), value, tail @ ..] = rest {
                    if grants.len() == MAX_GRANTS {
                        return Err(usage_error(
                            cmd,
                            format!("at most {MAX_GRANTS} devices per task"),
                        ));
                    }
                    grants.push(parse_grant(flag, value).ok_or_else(|| {
                        usage_error(cmd, format!("'{flag} {value}' is not a valid device"))
                    })?);
                    rest = tail;
                }
                let [program, args @ ..] = rest else {
                    return Err(usage_error(cmd, String::from("no PROGRAM")));
                };
                if program.starts_with("--") {
                    return Err(usage_error(
                        cmd,
                        format!("unknown option or missing value: '{program}'"),
                    ));
                }
                let mut line = String::from(*program);
                for word in args {
                    line.push(' ');
                    line.push_str(word);
                }
                Command::Spawn {
                    instance: instance(inst)?,
                    line,
                    grants,
                }
            }
            _ => {
                return Err(usage_error(
                    cmd,
                    String::from("expected: INST PROGRAM [ARGS...]"),
                ));
            }
        },
        "caps" => {
            arity(2)?;
            Command::Caps {
                instance: instance(args[0])?,
                task: task(args[1])?,
            }
        }
        "kill" => {
            arity(2)?;
            Command::Kill {
                instance: instance(args[0])?,
                task: task(args[1])?,
            }
        }
        _ => unreachable!("every name in COMMANDS is parsed above"),
    };
    Ok(Some(parsed))
}

fn positive(cmd: &'static CommandInfo, what: &str, n: u64) -> Result<u64, UsageError> {
    if n == 0 {
        Err(usage_error(cmd, format!("{what} must be at least 1")))
    } else {
        Ok(n)
    }
}

/// `--irq LINE` (0..=63), `--io BASE:LEN` (within the 64 Ki ports), `--mmio PHYS:PAGES`
/// (page-aligned, 1..=4096 pages).
fn parse_grant(flag: &str, value: &str) -> Option<GrantSpec> {
    match flag {
        "--irq" => parse_number(value)
            .filter(|&n| n < 64)
            .map(|n| GrantSpec::Irq(n as u8)),
        "--io" => {
            let (b, l) = value.split_once(':')?;
            let (base, len) = (parse_number(b)?, parse_number(l)?);
            (len > 0 && base + len <= 0x1_0000).then_some(GrantSpec::IoPorts {
                base: base as u16,
                len: len as u16,
            })
        }
        "--mmio" => {
            let (p, n) = value.split_once(':')?;
            let (phys, pages) = (parse_number(p)?, parse_number(n)?);
            (phys % 4096 == 0 && (1..=4096).contains(&pages) && phys < 1 << 52).then_some(
                GrantSpec::Mmio {
                    phys,
                    pages: pages as u32,
                },
            )
        }
        _ => None,
    }
}

/// A decimal or `0x` hexadecimal number.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// A byte count: a number with an optional binary unit, `K`, `M`, `G` (also `KiB`, `MB`...,
/// either case). Zero and overflow are refused.
pub fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    if digits.starts_with("0x") && shift != 0 {
        return None;
    }
    let n = parse_number(digits)?;
    let bytes = n.checked_mul(1 << shift)?;
    (bytes > 0).then_some(bytes)
}

/// Bytes in the largest binary unit that divides them (`16 MiB`, `1536 KiB`, `100 B`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    fn err(line: &str) -> UsageError {
        parse(line).unwrap_err()
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(ok("help"), Command::Help(None));
        assert_eq!(ok("help ping"), Command::Help(info("ping")));
        assert_eq!(ok("instances"), Command::Instances);
        assert_eq!(ok("  stats  "), Command::Stats);
        assert_eq!(ok("programs"), Command::Programs);
        assert_eq!(
            ok("ping 2"),
            Command::Ping {
                instance: InstanceId::new(2),
                count: 4
            }
        );
        assert_eq!(
            ok("ping 1 10"),
            Command::Ping {
                instance: InstanceId::new(1),
                count: 10
            }
        );
        assert_eq!(
            ok("cpu move 2 3"),
            Command::CpuMove {
                apic: 2,
                to: InstanceId::new(3)
            }
        );
        assert_eq!(
            ok("mem move 16M 1 2"),
            Command::MemMove {
                bytes: 16 << 20,
                from: InstanceId::new(1),
                to: InstanceId::new(2)
            }
        );
        assert_eq!(
            ok("irq route 8 2"),
            Command::IrqRoute {
                line: 8,
                to: InstanceId::new(2)
            }
        );
        assert_eq!(
            ok("irq mask 0x8"),
            Command::IrqMask {
                line: 8,
                mask: true
            }
        );
        assert_eq!(
            ok("irq unmask 3"),
            Command::IrqMask {
                line: 3,
                mask: false
            }
        );
        assert_eq!(
            ok("shutdown 3"),
            Command::Shutdown {
                instance: InstanceId::new(3)
            }
        );
        assert_eq!(
            ok("respawn 3"),
            Command::Respawn {
                instance: InstanceId::new(3)
            }
        );
        assert_eq!(ok("ps"), Command::Ps);
        assert_eq!(
            ok("spawn 2 spin 5"),
            Command::Spawn {
                instance: InstanceId::new(2),
                line: String::from("spin 5"),
                grants: Vec::new(),
            }
        );
        assert_eq!(
            ok("spawn 1 --irq 3 --io 0x2f8:8 com2drv"),
            Command::Spawn {
                instance: InstanceId::new(1),
                line: String::from("com2drv"),
                grants: alloc::vec![
                    GrantSpec::Irq(3),
                    GrantSpec::IoPorts {
                        base: 0x2f8,
                        len: 8
                    }
                ],
            }
        );
        assert_eq!(
            ok("caps 1 t2.1"),
            Command::Caps {
                instance: InstanceId::new(1),
                task: (1 << 32) | 2
            }
        );
        for bad in [
            "spawn 1 --irq 64 x",
            "spawn 1 --io 0xfffe:8 x",
            "spawn 1 --mmio 0x1001:1 x",
            "spawn 1 --irq 3",
            "spawn 1 --bogus 3 x",
            "caps 1",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
        assert_eq!(
            ok("kill 1 t3.2"),
            Command::Kill {
                instance: InstanceId::new(1),
                task: (2 << 32) | 3
            }
        );
        assert_eq!(
            ok("kill 1 5"),
            Command::Kill {
                instance: InstanceId::new(1),
                task: 5
            }
        );
        assert!(parse("spawn 2").is_err());
        assert!(parse("kill 1 tx").is_err());
        assert!(parse("kill 1 t1").is_err());
        assert!(parse("ps 3").is_err());
        assert_eq!(
            ok("crash 2"),
            Command::Crash {
                instance: InstanceId::new(2)
            }
        );
        assert_eq!(
            ok("bench"),
            Command::Bench {
                rounds: 200,
                instance: InstanceId::new(1)
            }
        );
        assert_eq!(
            ok("bench 50"),
            Command::Bench {
                rounds: 50,
                instance: InstanceId::new(1)
            }
        );
        assert_eq!(
            ok("bench 50 3"),
            Command::Bench {
                rounds: 50,
                instance: InstanceId::new(3)
            }
        );
        assert_eq!(parse("   "), Ok(None));
        // Every listed command is reachable by name.
        for c in COMMANDS {
            assert!(
                !matches!(parse(c.name), Err(UsageError { usage: None, .. })),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn wrong_lines_say_what_is_wrong_and_show_the_usage() {
        let e = err("frobnicate 3");
        assert!(e.message.contains("unknown command 'frobnicate'"), "{e:?}");
        assert_eq!(e.usage, None);
        for (line, says, usage) in [
            ("ping", "expected INST", "ping INST [COUNT]"),
            (
                "ping x",
                "instance 'x' is not a number",
                "ping INST [COUNT]",
            ),
            ("ping 1 0", "count must be at least 1", "ping INST [COUNT]"),
            ("ping 1 1001", "count '1001'", "ping INST [COUNT]"),
            ("ping 64", "instance '64'", "ping INST [COUNT]"),
            (
                "cpu add 1 2",
                "no subcommand 'cpu add'",
                "cpu move CPU INST",
            ),
            ("cpu move 1", "expected: move CPU INST", "cpu move CPU INST"),
            ("cpu move -1 2", "CPU '-1'", "cpu move CPU INST"),
            ("mem move 16Q 1 2", "size '16Q'", "mem move SIZE FROM TO"),
            ("mem move 0 1 2", "size '0'", "mem move SIZE FROM TO"),
            ("mem move 99999999999G 1 2", "size", "mem move SIZE FROM TO"),
            ("irq mask", "wrong arguments", COMMANDS[6].usage),
            (
                "irq reroute 1 2",
                "no subcommand 'irq reroute'",
                COMMANDS[6].usage,
            ),
            ("irq route 300 1", "line '300'", COMMANDS[6].usage),
            ("shutdown", "takes 1 argument(s), got 0", "shutdown INST"),
            ("crash 1 2", "takes 1 argument(s), got 2", "crash INST"),
            ("instances now", "takes 0 argument(s), got 1", "instances"),
            ("help nothing", "no command 'nothing'", "help [COMMAND]"),
            (
                "bench 0",
                "rounds must be at least 1",
                "bench [ROUNDS] [INST]",
            ),
            ("bench 5 1 2", "too many arguments", "bench [ROUNDS] [INST]"),
        ] {
            let e = err(line);
            assert!(e.message.contains(says), "{line}: {e:?}");
            assert_eq!(e.usage, Some(usage), "{line}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512kb"), Some(512 << 10));
        assert_eq!(parse_size("0x200000"), Some(2 << 20));
        for bad in [
            "",
            "M",
            "0",
            "1T",
            "1.5M",
            "-2M",
            "0x",
            "0x10M",
            "18446744073709551615K",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(format_size(16 << 20), "16 MiB");
        assert_eq!(format_size(1536 << 10), "1536 KiB");
        assert_eq!(format_size(3 << 30), "3 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
