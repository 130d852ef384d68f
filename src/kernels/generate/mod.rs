//! Generators of the WGSL kernels that share values through subgroup broadcasts (`*_sg.wgsl`).
//!
//! WGSL's `subgroupBroadcast` takes a constant lane, so a kernel that hands every value of a
//! tile to every lane cannot loop over the tile's rows: the rows of a tile are unrolled in text,
//! each with its own constant lane. These functions write that text, one per kernel, and the
//! `shaders/*_sg.wgsl` files are their output (each says so in its first line):
//!
//! - [`linear_sg()`]: the linear layer, one text per tile height in
//!   [`TILE_ROWS`](linear_sg::TILE_ROWS) (`linear_sg.wgsl` is the 32-row one);
//! - [`attention_sg()`]: the fused sliced attention for heads of 32 channels, its 8-key blocks
//!   unrolled (`attention_sg.wgsl`);
//! - [`conv_sg()`]: the stem's dense convolution as an implicit matrix multiply over 32-pixel
//!   tiles (`conv_sg.wgsl`);
//! - [`tome_match_sg()`]: bipartite soft matching, step 1, the B keys of one step unrolled
//!   (`tome_match_sg.wgsl`).
//!
//! The subgroup width is not unrolled: every text keeps the one substitutable line
//! `const SG: u32 = 8u;`, which the pipeline cache rewrites for the adapter's subgroup width (a
//! power of two in 4..=64), so one generated text serves every width. The workgroup size, the
//! tile's shape and every broadcast lane follow from `SG` as WGSL constant expressions (row `r`
//! is broadcast from lane `{r}u % SG`, register `{r}u / SG`), and the per-lane loads are
//! unrolled for the most a lane ever needs (at 4 lanes), each under a constant condition such as
//! `{g}u < XN` that is false at the wider subgroups.
//!
//! The engine generates the text when it first builds a pipeline ([`super::Kernel::source`]);
//! the checked-in `shaders/*_sg.wgsl` files are each generator's default output, kept for
//! reading, and `tests/shaders_validate.rs` regenerates and compares them (set
//! `SRET_TOME_WRITE_GENERATED=1` to rewrite them after changing a generator).

pub mod attention_sg;
pub mod conv_sg;
pub mod linear_sg;
pub mod tome_match_sg;

pub use attention_sg::attention_sg;
pub use conv_sg::conv_sg;
pub use linear_sg::linear_sg;
pub use tome_match_sg::tome_match_sg;

/// The tile's unrolled accumulators (`a{r}_0`, `a{r}_1` for each of `rows` rows) copied into a
/// private array `acc` (row `r` at `2r` and `2r + 1`), declared here, which the kernel's store
/// loop indexes: a store phase unrolled like the multiply took Mesa 25's lavapipe minutes to
/// compile (see the generators' docs).
fn keep_accumulators(rows: u32) -> String {
    let copies = (0..rows).map(|r| {
        format!(
            "    acc[{}] = a{r}_0;\n    acc[{}] = a{r}_1;",
            2 * r,
            2 * r + 1
        )
    });
    std::iter::once(format!("    var acc: array<vec4<f32>, {}>;", 2 * rows))
        .chain(copies)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `body` (lines joined by `\n`) inside `if (cond) { .. }`, the `if` indented by `indent`
/// spaces and the body by four more.
fn guard(cond: &str, body: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let inner = body
        .split('\n')
        .map(|line| format!("{pad}    {line}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!("{pad}if ({cond}) {{\n{inner}\n{pad}}}")
}
