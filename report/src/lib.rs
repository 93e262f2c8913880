//! The lab's published report: reads what the benches and the simulator
//! wrote and renders `reports/index.html` (see `page`), with the charts
//! drawn by `charts`, which the simulator's own pages share.

pub mod charts;
pub mod inputs;
pub mod multi_instance;
pub mod page;
pub mod provenance;
pub mod serve;
