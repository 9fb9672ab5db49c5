//! Tests of the command-line parser.

use super::*;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn run(a: &[&str]) -> Options {
    match parse(&args(a)) {
        Ok(Request::Run(o)) => *o,
        other => panic!("{other:?}"),
    }
}

#[test]
fn options_take_values_in_both_forms_and_by_prefix() {
    let o = run(&[
        "--mem",
        "mem_size_mib=512",
        "--vcpu=num_vcpus=2",
        "--kernel",
        "path=/k",
        "--blk",
        "path=/a",
        "--blk=path=/b",
        "--console",
    ]);
    assert_eq!(o.memory, "mem_size_mib=512");
    assert_eq!(o.vcpus, "num_vcpus=2");
    assert_eq!(o.blk, ["path=/a", "path=/b"]);
    assert!(o.console);
    let o = run(&["--kernel", "path=/k", "--", "uname", "-a", "--", "x"]);
    assert_eq!(o.command, ["uname", "-a", "--", "x"]);
}

#[test]
fn usage_errors_read_like_argparse() {
    let err = |a: &[&str]| parse(&args(a)).unwrap_err();
    assert_eq!(
        err(&["--memory", "mem_size_mib=1"]),
        Usage::Syntax("the following arguments are required: --kernel".into())
    );
    assert_eq!(
        err(&["--kernel", "path=/x", "--bogus"]),
        Usage::Syntax("unrecognized arguments: --bogus".into())
    );
    assert_eq!(
        err(&["--kernel"]),
        Usage::Syntax("argument --kernel: expected one argument".into())
    );
    assert_eq!(
        err(&["--v", "x", "--kernel", "path=/x"]),
        Usage::Syntax("ambiguous option: --v could match --vcpus, --version".into())
    );
    assert_eq!(
        err(&["--kernel", "path=/x", "--kernel", "path=/y"]),
        Usage::Syntax("argument --kernel: given twice (it takes one value)".into())
    );
    assert_eq!(
        err(&["--kernel", "path=/x", "--"]),
        Usage::Value("expected a command after --".into())
    );
    assert_eq!(parse(&args(&["--kernel", "p", "-h"])), Ok(Request::Help));
    assert_eq!(parse(&args(&["--vers"])), Ok(Request::Version));
}

#[test]
fn key_values_keep_commas_inside_the_command_line() {
    let kv = parse_key_values(
        "kernel",
        "path=/a,cmdline=\"x=1,y=2 z\",initrd=/i",
        KERNEL_KEYS,
    )
    .unwrap();
    assert_eq!(kv["cmdline"], "x=1,y=2 z");
    assert_eq!(kv["initrd"], "/i");
    let kv = parse_key_values(
        "kernel",
        "path=/a,cmdline=console=ttyS0,115200",
        KERNEL_KEYS,
    )
    .unwrap();
    assert_eq!(kv["cmdline"], "console=ttyS0,115200");
    let kv = parse_key_values("kernel", "path=/a,himem_start=", KERNEL_KEYS).unwrap();
    assert!(!kv.contains_key("himem_start"));
    assert_eq!(
        parse_key_values("kernel", "path=/x,bogus=1", KERNEL_KEYS),
        Err(Usage::Value(
            "--kernel: unknown key 'bogus' (keys: path, himem_start, cmdline, initrd)".into()
        ))
    );
    assert_eq!(
        parse_key_values("kernel", "path=/x,path=/y", KERNEL_KEYS),
        Err(Usage::Value("--kernel: path given twice".into()))
    );
    assert!(matches!(
        parse_key_values("kernel", "path", KERNEL_KEYS),
        Err(Usage::Value(m)) if m.contains("expected key=value, got 'path'")
    ));
}

#[test]
fn integers_read_as_python_reads_them() {
    for (text, want) in [
        ("256", Some(256)),
        ("0x100000", Some(0x100000)),
        ("-3", Some(-3)),
        ("1_000", Some(1000)),
        ("0", Some(0)),
        ("0b101", Some(5)),
        ("lots", None),
        ("010", None),
        ("", None),
        ("1__0", None),
        (
            "99999999999999999999999999",
            Some(99999999999999999999999999),
        ),
    ] {
        assert_eq!(py_int(text), want, "{text}");
    }
    assert_eq!(py_repr("it's"), "\"it's\"");
    assert_eq!(py_repr("a\nb"), "'a\\nb'");
}

#[test]
fn vm_args_report_the_python_cli_messages() {
    let opts = |memory: &str, kernel: &str, blk: &[&str], net: &[&str]| Options {
        memory: memory.into(),
        kernel: kernel.into(),
        blk: blk.iter().map(|s| s.to_string()).collect(),
        net: net.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    };
    let usage = |o: Options| match vm_args(&o) {
        Err(Refused::Usage(Usage::Value(m))) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        usage(opts("mem_size_mib=lots", "path=/x", &[], &[])),
        "--memory: invalid mem_size_mib='lots': expected an integer (decimal or 0x hex)"
    );
    assert_eq!(
        usage(opts("", "himem_start=1", &[], &[])),
        "--kernel: path=PATH is required"
    );
    assert!(
        usage(opts("", "path=/x", &["path=/a,read_only=maybe"], &[]))
            .contains("invalid read_only='maybe'")
    );
    assert!(usage(opts("", "path=/x", &[], &["user,forward=80"])).contains("forward='80'"));
    assert!(matches!(
        vm_args(&opts("", "path=/x", &[], &["user,forward=99999:80"])),
        Err(Refused::Vm(e)) if e.to_string().contains("forward")
    ));
    let ok = vm_args(&opts(
        "mem_size_mib=",
        "path=/k,cmdline=quiet,initrd=/i",
        &["path=/d,read_only=on,serial=s"],
        &["user,forward=8080:80+2222:22"],
    ))
    .unwrap();
    assert_eq!(ok.memory_mib.0, Some(256));
    assert_eq!(ok.kernel.cmdline, "quiet");
    assert!(ok.disks[0].read_only);
    assert_eq!(ok.disks[0].serial.as_deref(), Some("s"));
    assert!(matches!(
        &ok.net[0].backend,
        crate::config::NetBackendConfig::User { forward } if forward.len() == 2
    ));
    let tap = vm_args(&opts(
        "",
        "path=/k",
        &[],
        &["tap=tap0,mac=06:00:ac:10:00:02"],
    ))
    .unwrap();
    assert!(matches!(
        &tap.net[0].backend,
        crate::config::NetBackendConfig::Tap { name } if name == "tap0"
    ));
    assert_eq!(tap.net[0].mac, [6, 0, 0xac, 0x10, 0, 2]);
    assert!(usage(opts("", "path=/x", &[], &["tap=t,ro=on"])).contains("unknown key 'ro'"));
}
