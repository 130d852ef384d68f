//! Accuracy, fidelity, sweeps and pictures: the paper's sections 5.2-5.4 as a library.
//!
//! * [`dataset`]: scanning an image folder as torchvision's `ImageFolder` does (class folders
//!   sorted by name give the label index), or a flat folder of unlabelled images, or synthetic
//!   inputs.
//! * [`loader`]: decoding and preprocessing on CPU worker threads while the GPU runs the previous
//!   batch (std threads and a bounded channel), in a deterministic order, with unreadable files
//!   counted and named instead of stopping the run.
//! * [`metrics`]: top-1/top-5 against labels, and the label-free *fidelity* of a schedule: top-1
//!   agreement with the uncompressed model and the mean KL divergence of the two softmaxes.
//! * [`evaluate()`]: running several schedules over a data set (the uncompressed model always
//!   included, as the fidelity reference).
//! * [`pareto`]: the Pareto frontier of a set of points under mixed objectives.
//! * [`shard`]: `K/N` slices of a data set or of a sweep's grid for cluster job arrays.
//! * [`grid`]: the `START:STOP:STEP` value ranges of `sweep`.
//! * [`results`]: the results file (JSON and CSV) of `eval` and `sweep`, and merging shards.
//! * [`sweep`]: every `(r_init, alpha)` point of a grid: quality from [`evaluate()`], throughput and
//!   peak activation memory from [`crate::bench`], FLOPs from the static trajectory.
//! * [`plots`]: the Pareto frontier (paper Fig. 7), the effect of alpha (Fig. 6 and 8) and the
//!   token trajectories (Fig. 5), as PNG and SVG, with an embedded font (no system fonts).
//! * [`visualize`]: per-stage maps of which merged token every patch ended in.

pub mod dataset;
pub mod evaluate;
pub mod grid;
pub mod loader;
pub mod metrics;
pub mod pareto;
pub mod plots;
pub mod results;
pub mod shard;
pub mod sweep;
pub mod visualize;

pub use dataset::{ClassMap, DataSource, Dataset, Layout, Problem, Sample, SampleItem};
pub use evaluate::{evaluate, EvalOptions, EvalOutcome};
pub use metrics::QualityStats;
pub use pareto::{pareto_front, Sense};
pub use results::{ResultsFile, ScheduleResult};
pub use shard::Shard;
