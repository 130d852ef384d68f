//! Token merging: reduction schedules, merging constraints and the static trajectory.
//!
//! A [`Schedule`] says how many tokens each `Transformer_Block` execution should merge;
//! [`safe_r`] (the paper's Eq. 3) turns that into a count the sliced group attention and the
//! bipartite matching can honour; [`Trajectory::new`] applies both to a model and yields the
//! [`Trajectory`] of token counts, known before any image is seen.

pub mod constraints;
pub mod perm;
pub mod schedule;
pub mod split;
pub mod trajectory;

pub use constraints::safe_r;
pub use perm::DEFAULT_SEED;
pub use schedule::Schedule;
pub use split::Split;
pub use trajectory::{render_table, Execution, Trajectory};
