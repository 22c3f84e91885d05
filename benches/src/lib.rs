//! Support for the end-to-end benchmarks in `benches/`: the Dormouse under test in its own
//! process (`serve`), peer proxies (`peers`), stock load generators (`tools`), clients the
//! benchmark drives itself (`clients`), process plumbing (`procs`) and CPU placement (`cpus`).

pub mod clients;
pub mod cpus;
pub mod peers;
pub mod procs;
pub mod serve;
pub mod tools;
