//! Which kernel variant each kernel kind uses ([`Variants`]), as chosen by measurement
//! (`api`'s autotune), pinned by the user, or by the fixed default.
//!
//! A variant is a preference: a kernel falls back to the next one where the shape or the
//! device does not allow it (subgroup kernels need `Features::SUBGROUP` and a width in
//! [`SG_WIDTHS`](super::catalogue::SG_WIDTHS); vec4 attention needs head sizes and widths that
//! are multiples of 4; subgroup attention and matching need 32-channel heads; the tiled linear
//! kernel needs 256 invocations and 8.5 KiB of workgroup memory per workgroup).

use std::fmt;
use std::str::FromStr;

use super::catalogue::Kernel;
use crate::error::{Error, Result};

/// The kernels that come in several variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelKind {
    /// Linear layers (every epilogue).
    Linear,
    /// Dense convolutions from images (stems, patch embeddings).
    Conv,
    /// Attention.
    Attention,
    /// ToMe's bipartite matching.
    Matching,
    /// A block's MLP: fc1, GELU and fc2 fused in one kernel, or as two linear layers
    /// (`portable`: the linear kind's kernels).
    Mlp,
}

impl KernelKind {
    /// Every kind, in display order.
    pub const ALL: [KernelKind; 5] = [
        KernelKind::Linear,
        KernelKind::Conv,
        KernelKind::Attention,
        KernelKind::Matching,
        KernelKind::Mlp,
    ];

    /// Its name in `--kernels` and reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Linear => "linear",
            KernelKind::Conv => "conv",
            KernelKind::Attention => "attention",
            KernelKind::Matching => "matching",
            KernelKind::Mlp => "mlp",
        }
    }

    /// The variants the catalogue has for this kind, in [`Variant`] order (fastest-first
    /// guess first): what autotune measures and `--kernels` accepts.
    pub fn candidates(self) -> Vec<Variant> {
        let mut v: Vec<Variant> = Kernel::ALL
            .iter()
            .filter_map(|k| k.variant())
            .filter(|&(kind, _)| kind == self)
            .map(|(_, v)| v)
            .collect();
        if self == KernelKind::Mlp {
            // Unfused, the MLP is two linear layers: no kernel of its own.
            v.push(Variant::Portable);
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// One implementation style of a kernel kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// Subgroup broadcasts share loads across the lanes of a subgroup (`*_sg.wgsl`).
    Subgroup,
    /// Linear only: 64 x 64 workgroup tiles staged through workgroup memory with vec4 reads,
    /// the classic GPU tiling (`linear_tiled.wgsl`; no subgroups, needs 256 invocations and
    /// 8.5 KiB of workgroup memory, else the portable kernel).
    Tiled,
    /// One output per invocation with vec4 loads (attention only; elsewhere as `Portable`).
    Vec4,
    /// MLP only: fc1, GELU and fc2 in one kernel, the hidden activations kept on chip, the
    /// LayerNorm's statistics measured in it and the attention's projection in front of it
    /// where no merge comes between, SReT's Non_proj MLP after it on the same rows and the next
    /// block's `qkv` last (`mlp_fused.wgsl`; needs 256 invocations, 9.1 KiB of workgroup memory,
    /// 8 storage buffers and rows of at most 256 columns, else linear layers). Every family
    /// fuses: `Variants::all` keeps it.
    Fused,
    /// Register tiles without subgroups or shared memory: runs on every adapter.
    Portable,
}

impl Variant {
    /// Its name in `--kernels` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Subgroup => "subgroup",
            Variant::Tiled => "tiled",
            Variant::Vec4 => "vec4",
            Variant::Fused => "fused",
            Variant::Portable => "portable",
        }
    }
}

/// The preferred variant of every [`KernelKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variants {
    /// Linear layers.
    pub linear: Variant,
    /// Dense convolutions.
    pub conv: Variant,
    /// Attention.
    pub attention: Variant,
    /// Bipartite matching.
    pub matching: Variant,
    /// The blocks' MLPs.
    pub mlp: Variant,
}

impl Default for Variants {
    /// The fixed choice used without measurement: subgroup kernels wherever they can run,
    /// else vec4 attention, else the portable kernels (the fastest on every adapter measured
    /// so far: lavapipe at 8 and 16 lanes), and the MLP as two linear layers: the fused MLP
    /// kernel synchronises its 256 invocations at workgroup barriers, which software
    /// rasterisers pay dearly for (17x the unfused pair's time on lavapipe, as the tiled linear
    /// kernel pays 8.6x), and no GPU has measured it yet. Autotune measures it (round 0).
    fn default() -> Self {
        Variants {
            mlp: Variant::Portable,
            ..Variants::all(Variant::Subgroup)
        }
    }
}

impl Variants {
    /// Every kind preferring `v`, and the kinds without a `v` kernel their portable one
    /// (`Variants::all(Variant::Tiled)` is the tiled linear kernel and portable elsewhere),
    /// except the MLP, which stays fused in every family (fusing is not a kernel style; its
    /// linear layers are the linear kind's where it cannot fuse; `mlp=portable` unfuses).
    pub fn all(v: Variant) -> Self {
        let mut out = Variants {
            linear: v,
            conv: v,
            attention: v,
            matching: v,
            mlp: Variant::Fused,
        };
        for kind in KernelKind::ALL {
            if kind != KernelKind::Mlp && !kind.candidates().contains(&v) {
                out.set(kind, Variant::Portable);
            }
        }
        out
    }

    /// Every kind portable, the MLP as two (portable) linear layers: what runs on every
    /// adapter, the reference the kernel check compares the other variants with.
    pub fn portable() -> Self {
        Variants {
            mlp: Variant::Portable,
            ..Variants::all(Variant::Portable)
        }
    }

    /// The variant `kind` prefers.
    pub fn get(&self, kind: KernelKind) -> Variant {
        match kind {
            KernelKind::Linear => self.linear,
            KernelKind::Conv => self.conv,
            KernelKind::Attention => self.attention,
            KernelKind::Matching => self.matching,
            KernelKind::Mlp => self.mlp,
        }
    }

    /// Set the variant of `kind`.
    pub fn set(&mut self, kind: KernelKind, v: Variant) {
        match kind {
            KernelKind::Linear => self.linear = v,
            KernelKind::Conv => self.conv = v,
            KernelKind::Attention => self.attention = v,
            KernelKind::Matching => self.matching = v,
            KernelKind::Mlp => self.mlp = v,
        }
    }
}

/// `linear=subgroup,conv=portable,attention=vec4,matching=subgroup`.
impl fmt::Display for Variants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = KernelKind::ALL
            .iter()
            .map(|&k| format!("{}={}", k.name(), self.get(k).name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `KIND=VARIANT` pairs separated by commas (kinds not named keep the default), or one
/// variant name for every kind.
impl FromStr for Variants {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| Error::arg("kernels", s, why);
        let variant = |v: &str| {
            [
                Variant::Subgroup,
                Variant::Tiled,
                Variant::Vec4,
                Variant::Fused,
                Variant::Portable,
            ]
            .into_iter()
            .find(|x| x.name() == v.trim())
            .ok_or_else(|| {
                bad(format!(
                    "unknown variant '{v}' (subgroup, tiled, vec4, fused or portable)"
                ))
            })
        };
        if !s.contains('=') {
            return Ok(Variants::all(variant(s)?));
        }
        let mut out = Variants::default();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("'{part}' is not KIND=VARIANT")))?;
            let kind = KernelKind::ALL
                .into_iter()
                .find(|x| x.name() == k.trim())
                .ok_or_else(|| {
                    bad(format!(
                        "unknown kernel kind '{k}' (linear, conv, attention, matching or mlp)"
                    ))
                })?;
            let v = variant(v)?;
            if !kind.candidates().contains(&v) {
                return Err(bad(format!("{} has no {} variant", kind.name(), v.name())));
            }
            out.set(kind, v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_round_trip_through_text() {
        let mut v = Variants::default();
        v.set(KernelKind::Attention, Variant::Vec4);
        v.set(KernelKind::Conv, Variant::Portable);
        assert_eq!(v.to_string().parse::<Variants>().unwrap(), v);
        assert_eq!(
            "portable".parse::<Variants>().unwrap(),
            Variants::all(Variant::Portable)
        );
        let partial: Variants = "matching=portable".parse().unwrap();
        assert_eq!(partial.matching, Variant::Portable);
        assert_eq!(partial.linear, Variant::Subgroup);
        let fused: Variants = "mlp=fused".parse().unwrap();
        assert_eq!(
            (fused.mlp, fused.linear),
            (Variant::Fused, Variant::Subgroup)
        );
        assert_eq!(Variants::default().mlp, Variant::Portable);
        for bad in [
            "linear=fast",
            "mlp=subgroup",
            "linear=fused",
            "linear=vec4",
            "linear",
            "=",
            "",
        ] {
            assert!(bad.parse::<Variants>().is_err(), "{bad}");
        }
    }

    #[test]
    fn candidates_come_from_the_catalogue() {
        use Variant::*;
        assert_eq!(KernelKind::Linear.candidates(), [Subgroup, Tiled, Portable]);
        assert_eq!(
            KernelKind::Attention.candidates(),
            [Subgroup, Vec4, Portable]
        );
        assert_eq!(KernelKind::Conv.candidates(), [Subgroup, Portable]);
        assert_eq!(KernelKind::Matching.candidates(), [Subgroup, Portable]);
        assert_eq!(KernelKind::Mlp.candidates(), [Fused, Portable]);
        for kind in KernelKind::ALL {
            assert_eq!(
                kind.candidates().last(),
                Some(&Portable),
                "{}: every kind runs everywhere",
                kind.name()
            );
        }
        let tiled = Variants::all(Tiled);
        assert_eq!((tiled.linear, tiled.attention), (Tiled, Portable));
        // Every family fuses the MLP; the all-portable reference does not.
        for v in [Subgroup, Tiled, Vec4, Portable] {
            assert_eq!(Variants::all(v).mlp, Fused);
        }
        let reference = Variants::portable();
        assert!(KernelKind::ALL
            .iter()
            .all(|&k| reference.get(k) == Portable));
    }
}
