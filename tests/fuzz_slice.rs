//! A small deterministic slice of the fuzz campaign (`examples/fuzz.rs`, issue 14): no case
//! may panic, ccq may accept no safetensors header that the reference `safetensors` crate
//! rejects, except the documented classes of `fuzz::EXPLAINED`, and every error message
//! names a file and says in ccq's words what is wrong (`fuzz::audit_message`).

#[path = "support/fuzz.rs"]
mod fuzz;

#[test]
fn fuzz_slice_has_no_panic_and_accepts_nothing_safetensors_rejects() {
    let corpus = fuzz::Corpus::build();
    let options = fuzz::Options { cases: 300, seed: 14, threads: 2, only: None, verbose: false };
    let report = fuzz::run(&corpus, &options, false);
    let table = report.table();
    println!("{table}");
    assert_eq!(report.cases, 300);
    assert!(report.panics.is_empty(), "panics:\n{table}");
    let accepted: Vec<_> =
        report.unexplained_differences().into_iter().filter(|(k, _)| k.contains("accepts, safetensors rejects")).collect();
    assert!(accepted.is_empty(), "ccq accepts headers safetensors rejects: {accepted:?}\n{table}");
    assert!(report.agree.0 > 0 && report.agree.1 > 0, "the slice exercises both accepted and rejected headers:\n{table}");
    assert!(report.over_budget.is_empty(), "cases over the time budget:\n{table}");
    assert!(report.audited > 50, "the slice audits error messages:\n{table}");
    assert!(report.vague.is_empty(), "error messages that name no file, or leak serde's wording (defect 7):\n{table}");
}

#[test]
fn fuzz_cases_are_deterministic() {
    let corpus = fuzz::Corpus::build();
    let options = fuzz::Options { cases: 40, seed: 3, threads: 2, only: None, verbose: false };
    let (a, b) = (fuzz::run(&corpus, &options, false), fuzz::run(&corpus, &options, false));
    assert_eq!(a.outcomes, b.outcomes);
    assert_eq!(
        a.differences.iter().map(|(k, v)| (k, v.0)).collect::<Vec<_>>(),
        b.differences.iter().map(|(k, v)| (k, v.0)).collect::<Vec<_>>()
    );
}
