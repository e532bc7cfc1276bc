//! A closed stdout or stderr never aborts work (issue 14, defect 1): `ccq quantize ... 2>&1 |
//! head -0` used to panic ("failed printing to stderr: Broken pipe", exit 101) and lose the
//! conversion.

use super::{repo, temp_dir};
use std::process::{Command, Stdio};

/// Runs ccq with stdout and stderr connected to pipes whose reading ends are closed at once.
fn run_with_closed_pipes(args: &[&str]) -> std::process::ExitStatus {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_ccq")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("ccq starts");
    drop(child.stdout.take());
    drop(child.stderr.take());
    child.wait().expect("ccq ends")
}

#[test]
fn closed_stderr_and_stdout_do_not_abort_quantize_or_verify() {
    let dir = temp_dir("pipes");
    let out = dir.join("q").display().to_string();
    let src = repo("fixtures/ernie45-tiny-pt");
    // Progress, the summary and the plan go to closed pipes; the conversion must complete.
    let status = run_with_closed_pipes(&["quantize", &src, "-o", &out]);
    assert!(status.success(), "{status:?}");
    assert!(ccq::quantized::QuantizedCheckpoint::open(&out).is_ok());
    let status = run_with_closed_pipes(&["verify", &src, &out]);
    assert!(status.success(), "{status:?}");
    let status = run_with_closed_pipes(&["inspect", &src]);
    assert!(status.success(), "{status:?}");
}
