//! The command line, in the syntax and with the messages of the Python CLI
//! (`python -m vmm_reference`, built on argparse): options with `key=value,...` values,
//! `--opt VALUE` or `--opt=VALUE`, unambiguous prefixes of option names, `-h`/`--help`,
//! `--version`, and everything after `--` as a command to run in the guest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{
    net_config, DiskConfig, KernelConfig, NetConfig, RngConfig, ShareConfig, ShareProtocol,
    Transport, DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB,
};
use crate::error::Error;

/// The program's name in messages.
pub const PROG: &str = "vmm-reference";

pub use super::help::{HELP, USAGE};

const KERNEL_KEYS: &[&str] = &["path", "himem_start", "cmdline", "initrd"];
const BLK_KEYS: &[&str] = &["path", "read_only", "serial"];
const FS_KEYS: &[&str] = &["path", "tag", "read_only", "protocol"];
const TAP_KEYS: &[&str] = &["tap", "mac"];
const USER_KEYS: &[&str] = &["forward", "mac"];

/// Why the command line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// argparse-level: printed after the usage lines, as `vmm-reference: error: ...`.
    Syntax(String),
    /// An option's value is malformed: printed as `vmm-reference: error: ...` alone.
    Value(String),
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Print the help.
    Help,
    /// Print the version.
    Version,
    /// Boot with the console on this terminal, or run `command` in the guest.
    Run(Box<Options>),
}

/// The options, as given (values still `key=value` text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `--memory`.
    pub memory: String,
    /// `--vcpus`.
    pub vcpus: String,
    /// `--kernel`.
    pub kernel: String,
    /// `--blk`, in order.
    pub blk: Vec<String>,
    /// `--net`, in order.
    pub net: Vec<String>,
    /// `--fs`, in order.
    pub fs: Vec<String>,
    /// `--transport`, as written.
    pub transport: Option<String>,
    /// `--rng`.
    pub rng: bool,
    /// `--root`, as written.
    pub root: Option<String>,
    /// `--rw-cwd`.
    pub rw_cwd: bool,
    /// `--modules`.
    pub modules: Option<String>,
    /// `--root-protocol`, as written.
    pub root_protocol: Option<String>,
    /// `--gdb`, as written.
    pub gdb: Option<String>,
    /// `--console`.
    pub console: bool,
    /// `--ready-timeout`, as written.
    pub ready_timeout: Option<String>,
    /// Everything after `--`.
    pub command: Vec<String>,
}

/// Options taking one value; the flags are `--console`, `--version` and `--help`.
const VALUED: &[&str] = &[
    "--memory",
    "--vcpus",
    "--kernel",
    "--blk",
    "--fs",
    "--root",
    "--modules",
    "--root-protocol",
    "--gdb",
    "--net",
    "--transport",
    "--ready-timeout",
];
const FLAGS: &[&str] = &["--help", "--rng", "--rw-cwd", "--console", "--version"];

/// Python's `repr()` of a string, as the Python CLI's messages show values.
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Resolves `--name` (or an unambiguous prefix of one) to the option's full name; None when
/// no option has that name.
fn resolve(name: &str) -> Result<Option<&'static str>, Usage> {
    let all = || VALUED.iter().chain(FLAGS).copied();
    if let Some(exact) = all().find(|&o| o == name) {
        return Ok(Some(exact));
    }
    // In declaration order, as argparse lists them.
    let matches: Vec<&'static str> = all().filter(|o| o.starts_with(name)).collect();
    match matches.as_slice() {
        [one] if name.len() > 2 => Ok(Some(one)),
        [] | [_] => Ok(None),
        many => Err(Usage::Syntax(format!(
            "ambiguous option: {name} could match {}",
            many.join(", ")
        ))),
    }
}

/// Parses the arguments (without the program name).
pub fn parse(argv: &[String]) -> Result<Request, Usage> {
    let (argv, command) = match argv.iter().position(|a| a == "--") {
        Some(at) => {
            let command = argv[at + 1..].to_vec();
            if command.is_empty() {
                return Err(Usage::Value("expected a command after --".into()));
            }
            (&argv[..at], command)
        }
        None => (argv, Vec::new()),
    };
    let mut opts = Options {
        command,
        ..Options::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut unrecognized: Vec<String> = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if arg == "-h" {
            return Ok(Request::Help);
        }
        if !arg.starts_with("--") || arg.len() == 2 {
            unrecognized.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let Some(name) = resolve(name)? else {
            unrecognized.push(arg.clone());
            continue;
        };
        match name {
            "--help" => return Ok(Request::Help),
            "--version" => return Ok(Request::Version),
            "--console" | "--rng" | "--rw-cwd" => {
                if let Some(v) = &inline {
                    return Err(Usage::Syntax(format!(
                        "argument {name}: ignored explicit argument {}",
                        py_repr(v)
                    )));
                }
                match name {
                    "--rng" => opts.rng = true,
                    "--rw-cwd" => opts.rw_cwd = true,
                    _ => opts.console = true,
                }
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => match argv.get(i) {
                // argparse takes a following word as the value unless it looks like an option.
                Some(v) if !(v.starts_with("--") && v.len() > 2) => {
                    i += 1;
                    v.clone()
                }
                _ => {
                    return Err(Usage::Syntax(format!(
                        "argument {name}: expected one argument"
                    )))
                }
            },
        };
        let once = matches!(
            name,
            "--memory"
                | "--vcpus"
                | "--kernel"
                | "--transport"
                | "--ready-timeout"
                | "--root"
                | "--modules"
                | "--root-protocol"
                | "--gdb"
        );
        if once && seen.contains(&name) {
            return Err(Usage::Syntax(format!(
                "argument {name}: given twice (it takes one value)"
            )));
        }
        seen.push(name);
        match name {
            "--memory" => opts.memory = value,
            "--vcpus" => opts.vcpus = value,
            "--kernel" => opts.kernel = value,
            "--blk" => opts.blk.push(value),
            "--net" => opts.net.push(value),
            "--fs" => opts.fs.push(value),
            "--transport" => opts.transport = Some(value),
            "--root" => opts.root = Some(value),
            "--modules" => opts.modules = Some(value),
            "--root-protocol" => opts.root_protocol = Some(value),
            "--gdb" => opts.gdb = Some(value),
            _ => opts.ready_timeout = Some(value),
        }
    }
    if !seen.contains(&"--kernel") {
        return Err(Usage::Syntax(
            "the following arguments are required: --kernel".into(),
        ));
    }
    if !unrecognized.is_empty() {
        return Err(Usage::Syntax(format!(
            "unrecognized arguments: {}",
            unrecognized.join(" ")
        )));
    }
    if let Some(t) = &opts.ready_timeout {
        if t.trim().parse::<f64>().is_err() {
            return Err(Usage::Syntax(format!(
                "argument --ready-timeout: invalid float value: {}",
                py_repr(t)
            )));
        }
    }
    Ok(Request::Run(Box::new(opts)))
}

/// Parses `key=value,key=value` for `--option`; keys must be among `keys`. Pairs are split at a
/// comma followed by `word=`; inside a `cmdline` value, a comma followed by anything but a known
/// key stays part of the command line (`cmdline=console=ttyS0,115200 quiet`). Values may be
/// wrapped in double quotes. Empty values are dropped (the default applies).
pub fn parse_key_values(
    option: &str,
    text: &str,
    keys: &[&str],
) -> Result<BTreeMap<String, String>, Usage> {
    // Split at every comma that starts `word=` (argparse-side: `,(?=[A-Za-z_]\w*=)`).
    let bytes = text.as_bytes();
    let mut parts: Vec<&str> = Vec::new();
    let mut start = 0;
    for (at, &b) in bytes.iter().enumerate() {
        if b == b',' && starts_key(&text[at + 1..]) {
            parts.push(&text[start..at]);
            start = at + 1;
        }
    }
    parts.push(&text[start..]);
    let mut merged: Vec<String> = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let key = part.split('=').next().unwrap_or_default();
        match merged.last_mut() {
            Some(last) if !keys.contains(&key) && last.starts_with("cmdline=") => {
                last.push(',');
                last.push_str(part);
            }
            _ => merged.push(part.to_string()),
        }
    }
    let mut out = BTreeMap::new();
    let list = keys.join(", ");
    for part in merged {
        let Some((key, value)) = part.split_once('=') else {
            return Err(Usage::Value(format!(
                "--{option}: expected key=value, got {} (keys: {list})",
                py_repr(&part)
            )));
        };
        if !keys.contains(&key) {
            return Err(Usage::Value(format!(
                "--{option}: unknown key {} (keys: {list})",
                py_repr(key)
            )));
        }
        if out.contains_key(key) {
            return Err(Usage::Value(format!("--{option}: {key} given twice")));
        }
        let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            &value[1..value.len() - 1]
        } else {
            value
        };
        if !value.is_empty() {
            out.insert(key.to_string(), value.to_string());
        }
    }
    Ok(out)
}

/// Whether `s` starts with `[A-Za-z_]\w*=`.
fn starts_key(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    for c in chars {
        if c == '=' {
            return true;
        }
        if !(c.is_alphanumeric() || c == '_') {
            return false;
        }
    }
    false
}

/// An integer as Python's `int(value, 0)` reads it: decimal, `0x`, `0o`, `0b`, a sign,
/// underscores between digits. `None` when it is not one (or beyond ±2^127).
pub fn py_int(text: &str) -> Option<i128> {
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let lower = t.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else {
        // int(x, 0) refuses leading zeros in decimal ("010"), except zero itself.
        if lower.len() > 1
            && lower.starts_with('0')
            && lower.bytes().any(|b| b != b'0' && b != b'_')
        {
            return None;
        }
        (10, lower.as_str())
    };
    let digits = digits
        .strip_prefix('_')
        .filter(|_| radix != 10)
        .unwrap_or(digits);
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let v = i128::from_str_radix(&digits.replace('_', ""), radix).ok()?;
    Some(if negative { -v } else { v })
}

fn int_value(option: &str, key: &str, value: &str) -> Result<(Option<i128>, String), Usage> {
    match py_int(value) {
        Some(v) => Ok((Some(v), v.to_string())),
        None => Err(Usage::Value(format!(
            "--{option}: invalid {key}={}: expected an integer (decimal or 0x hex)",
            py_repr(value)
        ))),
    }
}

/// The VM the options describe; integer ranges and files are the core's to check.
#[derive(Debug, Clone)]
pub struct VmArgs {
    /// `memory_mib`, as written (checked by [`crate::config::int_arg`]).
    pub memory_mib: (Option<i128>, String),
    /// `vcpus`, as written.
    pub vcpus: (Option<i128>, String),
    /// `himem_start`, as written.
    pub himem_start: (Option<i128>, String),
    /// The kernel (its `himem_start` is filled in once checked).
    pub kernel: KernelConfig,
    /// The disks.
    pub disks: Vec<DiskConfig>,
    /// The network devices.
    pub net: Vec<NetConfig>,
    /// The shared directories.
    pub shares: Vec<ShareConfig>,
    /// The host's root as the guest's.
    pub host_root: Option<crate::config::HostRootConfig>,
    /// The virtio transport.
    pub transport: Transport,
    /// The entropy device.
    pub rng: Option<RngConfig>,
    /// Where gdb attaches.
    pub gdb: Option<crate::config::GdbConfig>,
}

/// Either kind of refusal: a malformed option or a value the core does not accept.
#[derive(Debug)]
pub enum Refused {
    /// Malformed.
    Usage(Usage),
    /// Refused by the core.
    Vm(Error),
}

impl From<Usage> for Refused {
    fn from(u: Usage) -> Self {
        Refused::Usage(u)
    }
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Vm(e)
    }
}

impl From<crate::refusal::Refusal> for Refused {
    fn from(r: crate::refusal::Refusal) -> Self {
        Refused::Vm(r.into())
    }
}

/// `--root`, `--rw-cwd`, `--modules` and `--root-protocol`.
fn host_root(opts: &Options) -> Result<Option<crate::config::HostRootConfig>, Usage> {
    match opts.root.as_deref() {
        None if opts.rw_cwd || opts.modules.is_some() || opts.root_protocol.is_some() => Err(
            Usage::Value("--rw-cwd, --modules and --root-protocol need --root host".into()),
        ),
        None => Ok(None),
        Some("host") => {
            Ok(Some(crate::config::HostRootConfig {
                cwd: if opts.rw_cwd {
                    Some(std::env::current_dir().map_err(|e| {
                        Usage::Value(format!("--rw-cwd: the working directory: {e}"))
                    })?)
                } else {
                    None
                },
                modules: opts.modules.as_ref().map(PathBuf::from),
                protocol: match &opts.root_protocol {
                    None => ShareProtocol::default(),
                    Some(p) => share_protocol("root-protocol", p)?,
                },
            }))
        }
        Some(other) => Err(Usage::Value(format!(
            "--root: invalid value {}: expected host",
            py_repr(other)
        ))),
    }
}

/// `on`/`off`/`true`/`false` for `--option`'s `key`.
fn on_off(option: &str, key: &str, value: &str) -> Result<bool, Usage> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(Usage::Value(format!(
            "--{option}: invalid {key}={}: expected on, off, true or false",
            py_repr(value)
        ))),
    }
}

/// `virtiofs` or `9p` for `--option`'s protocol.
fn share_protocol(option: &str, value: &str) -> Result<ShareProtocol, Usage> {
    ShareProtocol::parse("protocol", value).map_err(|_| {
        Usage::Value(format!(
            "--{option}: invalid {}{}: expected virtiofs or 9p",
            if option == "fs" {
                "protocol="
            } else {
                "value "
            },
            py_repr(value)
        ))
    })
}

/// Parses a `--fs` value, `path=DIR,tag=TAG[,read_only=on][,protocol=virtiofs]`.
pub fn parse_share(text: &str) -> Result<ShareConfig, Usage> {
    let fs = parse_key_values("fs", text, FS_KEYS)?;
    let (Some(path), Some(tag)) = (fs.get("path"), fs.get("tag")) else {
        return Err(Usage::Value(
            "--fs: path=DIR and tag=TAG are required".into(),
        ));
    };
    let protocol = match fs.get("protocol") {
        None => ShareProtocol::default(),
        Some(p) => share_protocol("fs", p)?,
    };
    Ok(ShareConfig {
        protocol,
        path: PathBuf::from(path),
        tag: tag.clone(),
        read_only: on_off(
            "fs",
            "read_only",
            fs.get("read_only").map_or("off", String::as_str),
        )?,
    })
}

/// Parses a `--blk` value, `path=PATH[,read_only=on|off|true|false][,serial=S]`.
pub fn parse_disk(text: &str) -> Result<DiskConfig, Usage> {
    let blk = parse_key_values("blk", text, BLK_KEYS)?;
    let Some(path) = blk.get("path") else {
        return Err(Usage::Value("--blk: path=PATH is required".into()));
    };
    let read_only = on_off(
        "blk",
        "read_only",
        blk.get("read_only").map_or("off", String::as_str),
    )?;
    Ok(DiskConfig {
        path: PathBuf::from(path),
        read_only,
        serial: blk.get("serial").cloned(),
    })
}

fn parse_net(index: usize, text: &str) -> Result<NetConfig, Refused> {
    if text == "user" || text.starts_with("user,") {
        let rest = text.strip_prefix("user").unwrap_or_default();
        let opts = parse_key_values("net", rest.strip_prefix(',').unwrap_or(rest), USER_KEYS)?;
        let mut forward = Vec::new();
        for pair in opts
            .get("forward")
            .map_or("", String::as_str)
            .split('+')
            .filter(|p| !p.is_empty())
        {
            let parsed = pair.split_once(':').and_then(|(h, g)| {
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                (digits(h) && digits(g)).then(|| (h.parse::<i64>(), g.parse::<i64>()))
            });
            match parsed {
                Some((Ok(h), Ok(g))) => forward.push((h, g)),
                Some(_) => forward.push((i64::MAX, i64::MAX)), // out of range: the core says so
                None => {
                    return Err(Usage::Value(format!(
                        "--net: invalid forward={}: expected HOST_PORT:GUEST_PORT (e.g. 8080:80)",
                        py_repr(pair)
                    ))
                    .into())
                }
            }
        }
        return Ok(net_config(
            index,
            "user",
            "",
            opts.get("mac").map(String::as_str),
            &forward,
        )?);
    }
    let opts = parse_key_values("net", text, TAP_KEYS)?;
    let Some(tap) = opts.get("tap") else {
        return Err(Usage::Value(
            "--net: expected tap=NAME[,mac=MAC] or user[,forward=HOST:GUEST]".into(),
        )
        .into());
    };
    Ok(net_config(
        index,
        "tap",
        tap,
        opts.get("mac").map(String::as_str),
        &[],
    )?)
}

/// The VM the options ask for, in the order the Python CLI checks them.
pub fn vm_args(opts: &Options) -> Result<VmArgs, Refused> {
    let memory = parse_key_values("memory", &opts.memory, &["mem_size_mib"])?;
    let vcpus = parse_key_values("vcpus", &opts.vcpus, &["num_vcpus"])?;
    let kernel = parse_key_values("kernel", &opts.kernel, KERNEL_KEYS)?;
    let Some(path) = kernel.get("path") else {
        return Err(Usage::Value("--kernel: path=PATH is required".into()).into());
    };
    let default_memory = DEFAULT_MEMORY_MIB.to_string();
    let memory_mib = int_value(
        "memory",
        "mem_size_mib",
        memory.get("mem_size_mib").unwrap_or(&default_memory),
    )?;
    let vcpus = int_value(
        "vcpus",
        "num_vcpus",
        vcpus.get("num_vcpus").map_or("1", |s| s),
    )?;
    let himem_start = int_value(
        "kernel",
        "himem_start",
        kernel.get("himem_start").map_or("1048576", |s| s),
    )?;
    let disks = opts
        .blk
        .iter()
        .map(|t| parse_disk(t))
        .collect::<Result<Vec<_>, _>>()?;
    let net = opts
        .net
        .iter()
        .enumerate()
        .map(|(i, t)| parse_net(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VmArgs {
        memory_mib,
        vcpus,
        himem_start,
        kernel: KernelConfig {
            path: PathBuf::from(path),
            cmdline: kernel
                .get("cmdline")
                .cloned()
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            himem_start: 0,
            initrd: kernel.get("initrd").map(PathBuf::from),
        },
        disks,
        net,
        shares: opts
            .fs
            .iter()
            .map(|t| parse_share(t))
            .collect::<Result<Vec<_>, _>>()?,
        transport: match &opts.transport {
            Some(t) => Transport::parse(t)?,
            None => Transport::Mmio,
        },
        rng: opts.rng.then(RngConfig::default),
        host_root: host_root(opts)?,
        gdb: match &opts.gdb {
            Some(g) => Some(crate::config::GdbConfig::parse(g)?),
            None => None,
        },
    })
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
