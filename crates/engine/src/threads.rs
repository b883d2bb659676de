//! Every thread the engine starts goes through [`spawn`], so each has a name (`trackshift-<job>`) that says what
//! it does in `top -H`, `perf` and a debugger.

use std::thread::JoinHandle;

/// Starts `f` on a thread named `trackshift-<job>`; the error says which thread could not start.
pub(crate) fn spawn<T, F>(job: &str, f: F) -> Result<JoinHandle<T>, String>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("trackshift-{job}"))
        .spawn(f)
        .map_err(|e| format!("cannot start the {job} thread: {e}"))
}
