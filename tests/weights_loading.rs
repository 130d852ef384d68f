//! Loading and saving weights as safetensors files with the reference's `state_dict()` names.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use safetensors::tensor::{Dtype, SafeTensors, View};
use sret_tome::io::safetensors::{
    expected_tensors, load_safetensors, load_safetensors_bytes, save_safetensors,
    to_safetensors_bytes,
};
use sret_tome::model::weights::{
    BlockWeights, Conv, LayerNorm, Linear, ModelWeights, NonProjWeights, StageWeights,
};
use sret_tome::model::{ModelConfig, SRET_MODEL_NAMES, VIT_MODEL_NAMES};
use sret_tome::Error;

const PATH: &str = "test-weights.safetensors";

// ------------------------------------------------------------------------------------------------
// Random weights
// ------------------------------------------------------------------------------------------------

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Non-zero, magnitude in [0.01, 1), random sign.
    fn value(&mut self) -> f32 {
        let m = 0.01 + 0.99 * self.unit();
        if self.next_u64() & 1 == 0 {
            m
        } else {
            -m
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
    fn linear(&mut self, out: usize, inp: usize) -> Linear {
        Linear {
            weight: self.vec(out * inp),
            bias: self.vec(out),
            out_features: out,
            in_features: inp,
        }
    }
    fn norm(&mut self, n: usize) -> LayerNorm {
        LayerNorm {
            weight: self.vec(n),
            bias: self.vec(n),
        }
    }
    fn conv(&mut self, out: usize, inp: usize, groups: usize) -> Conv {
        Conv {
            weight: self.vec(out * (inp / groups) * 9),
            bias: self.vec(out),
            out_channels: out,
            in_channels: inp,
            kernel: 3,
            stride: 2,
            padding: 1,
            groups,
        }
    }
}

fn random_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights {
    let mut r = Rng(seed);
    let d0 = cfg.stages[0].dim;
    let side = cfg.grid_side(0);
    let stem = vec![
        r.conv(cfg.stem_mid, 3, 1),
        r.conv(d0, cfg.stem_mid, 1),
        r.conv(d0, d0, 1),
    ];
    let pos_embed = r.vec(d0 * side * side);
    let stages = cfg
        .stages
        .iter()
        .enumerate()
        .map(|(s, st)| {
            let d = st.dim;
            StageWeights {
                blocks: (0..st.recursive_num)
                    .map(|_| BlockWeights {
                        norm1: r.norm(d),
                        qkv: r.linear(3 * d, d),
                        proj: r.linear(d, d),
                        norm2: r.norm(d),
                        fc1: r.linear(st.mlp_hidden, d),
                        fc2: r.linear(d, st.mlp_hidden),
                        coef: [r.value(), r.value(), r.value(), r.value()],
                    })
                    .collect(),
                non_projs: (0..st.depth)
                    .map(|_| NonProjWeights {
                        norm1: r.norm(d),
                        fc1: r.linear(st.np_hidden, d),
                        fc2: r.linear(d, st.np_hidden),
                        coef: [r.value(), r.value()],
                    })
                    .collect(),
                pool: cfg.stages.get(s + 1).map(|next| r.conv(next.dim, d, d)),
                pool_fc: None,
            }
        })
        .collect();
    let fd = cfg.final_dim();
    ModelWeights {
        stem,
        pos_embed,
        stages,
        norm: r.norm(fd),
        head: r.linear(cfg.num_classes, fd),
        lead_tokens: Vec::new(),
        head_dist: None,
    }
}

fn sret_t() -> ModelConfig {
    ModelConfig::by_name("sret_t").unwrap()
}

/// SReT-T weights and their file.
fn sample() -> (ModelConfig, ModelWeights, Vec<u8>) {
    let cfg = sret_t();
    let w = random_weights(&cfg, 7);
    let bytes = to_safetensors_bytes(&w, &cfg).unwrap();
    (cfg, w, bytes)
}

fn load(bytes: &[u8], cfg: &ModelConfig) -> sret_tome::Result<ModelWeights> {
    load_safetensors_bytes(bytes, Path::new(PATH), cfg)
}

fn load_err(bytes: &[u8], cfg: &ModelConfig) -> (Error, String) {
    let e = load(bytes, cfg).expect_err("the file should be refused");
    let msg = e.to_string();
    assert!(msg.contains(PATH), "the message names the file: {msg}");
    (e, msg)
}

// ------------------------------------------------------------------------------------------------
// Editing files
// ------------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

type Tensors = BTreeMap<String, Tensor>;

fn parse(bytes: &[u8]) -> Tensors {
    SafeTensors::deserialize(bytes)
        .unwrap()
        .iter()
        .map(|(name, v)| {
            (
                name.to_string(),
                Tensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

fn serialize(t: &Tensors) -> Vec<u8> {
    safetensors::serialize(t.iter().map(|(n, t)| (n.clone(), t.clone())), None).unwrap()
}

fn edit(bytes: &[u8], f: impl FnOnce(&mut Tensors)) -> Vec<u8> {
    let mut t = parse(bytes);
    f(&mut t);
    serialize(&t)
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn as_f32(t: &Tensor) -> Vec<f32> {
    assert_eq!(t.dtype, Dtype::F32);
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f32_tensor(shape: Vec<usize>, v: &[f32]) -> Tensor {
    assert_eq!(shape.iter().product::<usize>(), v.len());
    Tensor {
        dtype: Dtype::F32,
        shape,
        data: f32s(v),
    }
}

/// Round to nearest even f32 -> IEEE binary16.
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let a = bits & 0x7fff_ffff;
    if a >= 0x7f80_0000 {
        return sign | 0x7c00 | if a > 0x7f80_0000 { 0x200 } else { 0 };
    }
    if a >= 0x477f_f000 {
        return sign | 0x7c00; // rounds to infinity (>= 65520)
    }
    if a < 0x3880_0000 {
        // Subnormal (or the smallest normal after rounding): x * 2^24, exact scaling.
        let m = (f32::from_bits(a) * 16_777_216.0).round_ties_even() as u16;
        return sign | m;
    }
    let e = (a >> 23) - 112;
    let m = a & 0x7f_ffff;
    let mut h = (e << 10) | (m >> 13);
    let rest = m & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

/// Round to nearest even f32 -> bfloat16 (finite inputs).
fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits + 0x7fff + ((bits >> 16) & 1);
    (rounded >> 16) as u16
}

fn to_half(bytes: &[u8], dtype: Dtype) -> Vec<u8> {
    edit(bytes, |t| {
        for tensor in t.values_mut().filter(|t| t.dtype == Dtype::F32) {
            let half: Vec<u8> = as_f32(tensor)
                .iter()
                .flat_map(|&x| {
                    match dtype {
                        Dtype::F16 => f32_to_f16(x),
                        _ => f32_to_bf16(x),
                    }
                    .to_le_bytes()
                })
                .collect();
            tensor.dtype = dtype;
            tensor.data = half;
        }
    })
}

/// Flattens weights into (what, values) in a fixed order, for element-wise comparisons.
fn flatten(w: &ModelWeights) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = Vec::new();
    for (i, c) in w.stem.iter().enumerate() {
        v.push((format!("stem{i}.w"), c.weight.clone()));
        v.push((format!("stem{i}.b"), c.bias.clone()));
    }
    v.push(("pos".into(), w.pos_embed.clone()));
    let lin = |v: &mut Vec<(String, Vec<f32>)>, n: String, l: &Linear| {
        v.push((format!("{n}.w"), l.weight.clone()));
        v.push((format!("{n}.b"), l.bias.clone()));
    };
    let norm = |v: &mut Vec<(String, Vec<f32>)>, n: String, l: &LayerNorm| {
        v.push((format!("{n}.w"), l.weight.clone()));
        v.push((format!("{n}.b"), l.bias.clone()));
    };
    for (s, st) in w.stages.iter().enumerate() {
        for (b, bw) in st.blocks.iter().enumerate() {
            let p = format!("s{s}.block{b}");
            norm(&mut v, format!("{p}.norm1"), &bw.norm1);
            lin(&mut v, format!("{p}.qkv"), &bw.qkv);
            lin(&mut v, format!("{p}.proj"), &bw.proj);
            norm(&mut v, format!("{p}.norm2"), &bw.norm2);
            lin(&mut v, format!("{p}.fc1"), &bw.fc1);
            lin(&mut v, format!("{p}.fc2"), &bw.fc2);
            v.push((format!("{p}.coef"), bw.coef.to_vec()));
        }
        for (k, np) in st.non_projs.iter().enumerate() {
            let p = format!("s{s}.np{k}");
            norm(&mut v, format!("{p}.norm1"), &np.norm1);
            lin(&mut v, format!("{p}.fc1"), &np.fc1);
            lin(&mut v, format!("{p}.fc2"), &np.fc2);
            v.push((format!("{p}.coef"), np.coef.to_vec()));
        }
        if let Some(pool) = &st.pool {
            v.push((format!("s{s}.pool.w"), pool.weight.clone()));
            v.push((format!("s{s}.pool.b"), pool.bias.clone()));
        }
    }
    norm(&mut v, "norm".into(), &w.norm);
    lin(&mut v, "head".into(), &w.head);
    v
}

/// `Some((stage, shared block, loop, suffix))` for a `Transformer_Block` tensor name.
fn shared_copy(cfg: &ModelConfig, name: &str) -> Option<(usize, usize, usize, String)> {
    let rest = name.strip_prefix("transformers.")?;
    let mut parts = rest.splitn(4, '.');
    let s: usize = parts.next()?.parse().ok()?;
    assert_eq!(parts.next()?, "blocks");
    let index: usize = parts.next()?.parse().ok()?;
    let suffix = parts.next()?.to_string();
    if index % 2 == 1 {
        return None; // a Non_proj
    }
    let loops = cfg.stages[s].loops();
    Some((s, index / 2 / loops, index / 2 % loops, suffix))
}

// ------------------------------------------------------------------------------------------------
// Round trips
// ------------------------------------------------------------------------------------------------

#[test]
fn every_model_round_trips_exactly() {
    for (i, name) in SRET_MODEL_NAMES.iter().enumerate() {
        let cfg = ModelConfig::by_name(name).unwrap();
        let w = random_weights(&cfg, 1000 + i as u64);
        let bytes = to_safetensors_bytes(&w, &cfg).unwrap();

        // The file holds exactly the state_dict: expected_tensors plus three BN counters.
        let t = parse(&bytes);
        let expected = expected_tensors(&cfg);
        for (n, shape) in &expected {
            assert_eq!(&t[n].shape, shape, "{name}: {n}");
            assert_eq!(t[n].dtype, Dtype::F32, "{name}: {n}");
        }
        let counters: Vec<_> = t
            .keys()
            .filter(|n| n.ends_with("num_batches_tracked"))
            .collect();
        assert_eq!(counters.len(), 3, "{name}");
        assert_eq!(t.len(), expected.len() + 3, "{name}");
        for c in counters {
            assert_eq!((t[c].dtype, t[c].shape.as_slice()), (Dtype::I64, &[][..]));
        }

        let loaded = load(&bytes, &cfg).unwrap();
        assert!(loaded == w, "{name}: save -> load changed the weights");
        // Bitwise too (== treats -0.0 and 0.0 alike).
        for ((what, a), (_, b)) in flatten(&loaded).iter().zip(flatten(&w).iter()) {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {what}"
            );
        }
    }
}

#[test]
fn expected_tensors_follow_the_reference_layout() {
    let cfg = sret_t();
    let e = expected_tensors(&cfg);
    let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
    // state_dict() order: own parameter first, then the stem, the stages, pools, norm, head.
    assert_eq!(names[0], "pos_embed");
    assert_eq!(
        &names[1..7],
        [
            "patch_embed.conv1.weight",
            "patch_embed.conv1.bias",
            "patch_embed.bn1.weight",
            "patch_embed.bn1.bias",
            "patch_embed.bn1.running_mean",
            "patch_embed.bn1.running_var",
        ]
    );
    assert_eq!(names[names.len() - 1], "head.bias");
    let shape = |n: &str| e.iter().find(|(m, _)| m == n).unwrap().1.clone();
    assert_eq!(shape("pos_embed"), [1, 64, 28, 28]);
    assert_eq!(shape("patch_embed.conv2.weight"), [64, 32, 3, 3]);
    assert_eq!(shape("transformers.0.blocks.2.attn.qkv.weight"), [192, 64]);
    assert_eq!(shape("transformers.0.blocks.2.attn.qkv.bias"), [192]);
    assert_eq!(shape("transformers.0.blocks.3.mlp.fc1.weight"), [64, 64]);
    assert_eq!(shape("transformers.2.blocks.11.coefficient2.bias"), [1]);
    assert_eq!(shape("transformers.2.blocks.10.coefficient4.bias"), [1]);
    assert_eq!(shape("transformers.2.blocks.10.mlp.fc1.weight"), [921, 256]);
    assert_eq!(shape("pools.0.conv.weight"), [128, 1, 3, 3]);
    assert_eq!(shape("head.weight"), [1000, 256]);
    // 20 Transformer_Block entries (16 tensors each) and 20 Non_projs (8 each), 2 pools, stem 18,
    // pos_embed, norm, head.
    assert_eq!(e.len(), 1 + 18 + 20 * 16 + 20 * 8 + 4 + 4);
    // Non_proj entries are odd, blocks even; stage 1 has 20 entries.
    assert!(names.contains(&"transformers.1.blocks.19.coefficient2.bias"));
    assert!(!names.contains(&"transformers.1.blocks.20.norm1.weight"));
    assert!(!names.contains(&"transformers.1.blocks.1.coefficient3.bias"));
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len());
}

#[test]
fn save_and_load_through_a_file() {
    let (cfg, w, bytes) = sample();
    let dir = std::env::temp_dir().join(format!("sret-tome-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sret_t.safetensors");
    save_safetensors(&w, &cfg, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let loaded = load_safetensors(&path, &cfg).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(loaded == w);

    let missing = dir.join("nope.safetensors");
    let e = load_safetensors(&missing, &cfg).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("nope.safetensors"), "{e}");
}

#[test]
fn first_names_only_load() {
    let (cfg, w, bytes) = sample();
    let mut dropped = 0;
    let file = edit(&bytes, |t| {
        t.retain(|n, _| !matches!(shared_copy(&cfg, n), Some((_, _, l, _)) if l != 0));
        dropped = expected_tensors(&cfg).len() + 3 - t.len();
    });
    // 10 shared blocks, each stored a second time, 16 tensors per block.
    assert_eq!(dropped, 10 * 16);
    assert!(load(&file, &cfg).unwrap() == w);
}

#[test]
fn any_single_copy_of_a_shared_tensor_loads() {
    // safetensors.torch.save_model keeps the name that sorts first as a string, which is
    // `blocks.10` rather than `blocks.8` for the third shared block of stages 1 and 2.
    let (cfg, w, bytes) = sample();
    let lexicographic = edit(&bytes, |t| {
        let mut kept: BTreeMap<(usize, usize, String), String> = BTreeMap::new();
        for n in t.keys() {
            if let Some((s, b, _, suffix)) = shared_copy(&cfg, n) {
                let e = kept.entry((s, b, suffix)).or_insert_with(|| n.clone());
                if n < e {
                    *e = n.clone();
                }
            }
        }
        let kept: HashSet<String> = kept.into_values().collect();
        assert!(kept.contains("transformers.1.blocks.10.attn.qkv.weight"));
        assert!(kept.contains("transformers.2.blocks.10.norm1.bias"));
        t.retain(|n, _| shared_copy(&cfg, n).is_none() || kept.contains(n));
    });
    assert!(load(&lexicographic, &cfg).unwrap() == w);

    let last_only = edit(&bytes, |t| {
        t.retain(|n, _| !matches!(shared_copy(&cfg, n), Some((_, _, 0, _))))
    });
    assert!(load(&last_only, &cfg).unwrap() == w);
}

#[test]
fn data_parallel_prefix_is_stripped() {
    let (cfg, w, bytes) = sample();
    let prefixed = edit(&bytes, |t| {
        *t = std::mem::take(t)
            .into_iter()
            .map(|(n, v)| (format!("module.{n}"), v))
            .collect();
    });
    assert!(load(&prefixed, &cfg).unwrap() == w);

    // A prefix on some names only is not a DataParallel checkpoint.
    let mixed = edit(&bytes, |t| {
        let v = t.remove("head.bias").unwrap();
        t.insert("module.head.bias".into(), v);
    });
    let (e, msg) = load_err(&mixed, &cfg);
    assert!(matches!(e, Error::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("'head.bias'"), "{msg}");
}

#[test]
fn batch_norm_counters_are_optional_and_any_integer() {
    let (cfg, w, bytes) = sample();
    let without = edit(&bytes, |t| {
        t.retain(|n, _| !n.ends_with("num_batches_tracked"))
    });
    assert!(load(&without, &cfg).unwrap() == w);

    let int32 = edit(&bytes, |t| {
        let c = t.get_mut("patch_embed.bn2.num_batches_tracked").unwrap();
        *c = Tensor {
            dtype: Dtype::I32,
            shape: vec![1],
            data: 12345i32.to_le_bytes().to_vec(),
        };
    });
    assert!(load(&int32, &cfg).unwrap() == w);

    let float = edit(&bytes, |t| {
        *t.get_mut("patch_embed.bn3.num_batches_tracked").unwrap() = f32_tensor(vec![], &[3.0]);
    });
    let (e, msg) = load_err(&float, &cfg);
    assert!(matches!(e, Error::DtypeMismatch { .. }), "{msg}");
    assert!(msg.contains("patch_embed.bn3.num_batches_tracked"), "{msg}");
}

// ------------------------------------------------------------------------------------------------
// Half precision
// ------------------------------------------------------------------------------------------------

fn assert_close(loaded: &ModelWeights, w: &ModelWeights, rel: f32, what: &str) {
    let mut checked = 0usize;
    for ((name, a), (_, b)) in flatten(loaded).iter().zip(flatten(w).iter()) {
        assert_eq!(a.len(), b.len(), "{what}: {name}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            // Rounding to the half format, plus the identity BN's running_var (1 - 1e-5)
            // rounding to 1.0 for the stem.
            let tol = y.abs() * (rel + 1e-5) + 1e-7;
            assert!(
                (x - y).abs() <= tol,
                "{what}: {name}[{i}] = {x}, expected {y}"
            );
            checked += 1;
        }
    }
    assert!(checked > 4_000_000);
}

#[test]
fn f16_files_load_within_f16_rounding() {
    let (cfg, w, bytes) = sample();
    let half = to_half(&bytes, Dtype::F16);
    assert_eq!(parse(&half)["head.weight"].dtype, Dtype::F16);
    let loaded = load(&half, &cfg).unwrap();
    assert!(loaded != w, "f16 rounding should change something");
    assert_close(&loaded, &w, 1.0 / 2048.0, "f16");
    // Values that f16 holds exactly come back exactly.
    assert_eq!(loaded.stages[0].blocks[0].coef.len(), 4);
    let exact = edit(&half, |t| {
        let h: Vec<u8> = [1.0f32, -0.5]
            .iter()
            .flat_map(|&x| f32_to_f16(x).to_le_bytes())
            .collect();
        t.get_mut("transformers.0.blocks.1.coefficient1.bias")
            .unwrap()
            .data = h[..2].to_vec();
        t.get_mut("transformers.0.blocks.1.coefficient2.bias")
            .unwrap()
            .data = h[2..].to_vec();
    });
    let loaded = load(&exact, &cfg).unwrap();
    assert_eq!(loaded.stages[0].non_projs[0].coef, [1.0, -0.5]);
}

#[test]
fn bf16_files_load_within_bf16_rounding() {
    let (cfg, w, bytes) = sample();
    let half = to_half(&bytes, Dtype::BF16);
    assert_eq!(parse(&half)["pos_embed"].dtype, Dtype::BF16);
    let loaded = load(&half, &cfg).unwrap();
    assert!(loaded != w);
    assert_close(&loaded, &w, 1.0 / 256.0, "bf16");
}

#[test]
fn mixed_dtypes_load() {
    // A file is not required to use one dtype throughout.
    let (cfg, w, bytes) = sample();
    let half = to_half(&bytes, Dtype::F16);
    let mixed = edit(&bytes, |t| {
        let h = parse(&half);
        t.insert("head.weight".into(), h["head.weight"].clone());
    });
    let loaded = load(&mixed, &cfg).unwrap();
    assert!(loaded.stages == w.stages && loaded.head.bias == w.head.bias);
    assert!(loaded.head.weight != w.head.weight);
}

// ------------------------------------------------------------------------------------------------
// BatchNorm folding
// ------------------------------------------------------------------------------------------------

#[test]
fn batch_norm_is_folded_into_the_stem() {
    let (cfg, w, bytes) = sample();
    let c = cfg.stages[0].dim; // bn2 has dim0 channels
    let mut r = Rng(99);
    let gamma: Vec<f32> = r.vec(c).iter().map(|g| g * 2.0).collect();
    let beta = r.vec(c);
    let mean: Vec<f32> = r.vec(c).iter().map(|m| m * 3.0).collect();
    let var: Vec<f32> = (0..c).map(|_| 0.05 + 4.0 * r.unit()).collect();
    let file = edit(&bytes, |t| {
        for (p, v) in [
            ("weight", &gamma),
            ("bias", &beta),
            ("running_mean", &mean),
            ("running_var", &var),
        ] {
            t.insert(format!("patch_embed.bn2.{p}"), f32_tensor(vec![c], v));
        }
    });
    let loaded = load(&file, &cfg).unwrap();
    assert!(loaded.stem[0] == w.stem[0] && loaded.stem[2] == w.stem[2]);
    assert!(loaded.stages == w.stages && loaded.pos_embed == w.pos_embed);

    let conv = &w.stem[1];
    let got = &loaded.stem[1];
    assert_eq!(
        (
            got.out_channels,
            got.in_channels,
            got.kernel,
            got.stride,
            got.padding,
            got.groups
        ),
        (64, 32, 3, 2, 1, 1)
    );
    let per = conv.weight.len() / c;
    for o in 0..c {
        let inv_std = 1.0 / (var[o] as f64 + 1e-5).sqrt();
        let scale = gamma[o] as f64 * inv_std;
        for j in 0..per {
            let want = conv.weight[o * per + j] as f64 * scale;
            let have = got.weight[o * per + j] as f64;
            assert!(
                (have - want).abs() <= want.abs() * 1e-6 + 1e-9,
                "w[{o},{j}] {have} vs {want}"
            );
        }
        let want = (conv.bias[o] as f64 - mean[o] as f64) * scale + beta[o] as f64;
        let have = got.bias[o] as f64;
        assert!(
            (have - want).abs() <= want.abs() * 1e-6 + 1e-6,
            "b[{o}] {have} vs {want}"
        );
        // Saving the folded stem and loading it again gives it back exactly.
    }
    let again = load(&to_safetensors_bytes(&loaded, &cfg).unwrap(), &cfg).unwrap();
    assert!(again == loaded);
}

// ------------------------------------------------------------------------------------------------
// Refused files
// ------------------------------------------------------------------------------------------------

#[test]
fn a_missing_tensor_is_named() {
    let (cfg, _, bytes) = sample();
    let file = edit(&bytes, |t| {
        t.remove("transformers.1.blocks.3.mlp.fc1.weight").unwrap();
    });
    let (e, msg) = load_err(&file, &cfg);
    assert!(matches!(e, Error::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("'transformers.1.blocks.3.mlp.fc1.weight'"),
        "{msg}"
    );

    // Both copies of a shared tensor missing: the first name is reported.
    let file = edit(&bytes, |t| {
        t.remove("transformers.1.blocks.8.norm2.bias").unwrap();
        t.remove("transformers.1.blocks.10.norm2.bias").unwrap();
    });
    let (e, msg) = load_err(&file, &cfg);
    assert!(matches!(e, Error::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("'transformers.1.blocks.8.norm2.bias'"),
        "{msg}"
    );

    for name in [
        "patch_embed.bn1.running_var",
        "pos_embed",
        "pools.1.conv.bias",
        "head.weight",
    ] {
        let file = edit(&bytes, |t| {
            t.remove(name).unwrap();
        });
        let (e, msg) = load_err(&file, &cfg);
        assert!(matches!(e, Error::MissingTensor { .. }), "{msg}");
        assert!(msg.contains(&format!("'{name}'")), "{msg}");
    }
}

#[test]
fn an_extra_tensor_is_named() {
    let (cfg, _, bytes) = sample();
    for extra in [
        "head_dist.weight",
        "transformers.0.blocks.8.norm1.weight",
        "pools.2.conv.bias",
    ] {
        let file = edit(&bytes, |t| {
            t.insert(extra.into(), f32_tensor(vec![2], &[1.0, 2.0]));
        });
        let (e, msg) = load_err(&file, &cfg);
        assert!(matches!(e, Error::UnexpectedTensor { .. }), "{msg}");
        assert!(
            msg.contains(&format!("'{extra}'")) && msg.contains("sret_t"),
            "{msg}"
        );
    }
}

#[test]
fn a_wrong_shape_is_named_with_both_shapes() {
    let (cfg, _, bytes) = sample();
    let file = edit(&bytes, |t| {
        t.insert("head.bias".into(), f32_tensor(vec![999], &vec![0.5; 999]));
    });
    let (e, msg) = load_err(&file, &cfg);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("'head.bias'") && msg.contains("[999]") && msg.contains("[1000]"),
        "{msg}"
    );

    // Same element count, different shape: pos_embed without its leading 1.
    let file = edit(&bytes, |t| {
        t.get_mut("pos_embed").unwrap().shape = vec![64, 28, 28];
    });
    let (e, msg) = load_err(&file, &cfg);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("'pos_embed'")
            && msg.contains("[64, 28, 28]")
            && msg.contains("[1, 64, 28, 28]"),
        "{msg}"
    );

    // Transposed linear weight in a shared copy.
    let file = edit(&bytes, |t| {
        t.get_mut("transformers.2.blocks.2.mlp.fc2.weight")
            .unwrap()
            .shape = vec![921, 256];
    });
    let (e, msg) = load_err(&file, &cfg);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("'transformers.2.blocks.2.mlp.fc2.weight'")
            && msg.contains("[921, 256]")
            && msg.contains("[256, 921]"),
        "{msg}"
    );
}

#[test]
fn another_model_is_refused_by_shape() {
    let cfg_s = ModelConfig::by_name("sret_s").unwrap();
    let bytes = to_safetensors_bytes(&random_weights(&cfg_s, 3), &cfg_s).unwrap();
    let (e, msg) = load_err(&bytes, &sret_t());
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("'pos_embed'"), "{msg}");
    // The distilled twin shares the architecture.
    let lt = ModelConfig::by_name("sret_lt").unwrap();
    let w = random_weights(&lt, 4);
    let bytes = to_safetensors_bytes(&w, &lt).unwrap();
    let lt_distill = ModelConfig::by_name("sret_lt_distill").unwrap();
    assert!(load(&bytes, &lt_distill).unwrap() == w);
    // SReT-LT and SReT-T differ only in the MLP width.
    let (e, msg) = load_err(&bytes, &sret_t());
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("mlp.fc1.weight") && msg.contains("[256, 64]") && msg.contains("[230, 64]"),
        "{msg}"
    );
}

#[test]
fn a_wrong_dtype_is_named() {
    let (cfg, _, bytes) = sample();
    for (dtype, width, label) in [
        (Dtype::I32, 4, "I32"),
        (Dtype::F64, 8, "F64"),
        (Dtype::U8, 1, "U8"),
    ] {
        let file = edit(&bytes, |t| {
            let n = t.get_mut("transformers.0.blocks.5.norm1.weight").unwrap();
            n.dtype = dtype;
            n.data = vec![0; 64 * width];
        });
        let (e, msg) = load_err(&file, &cfg);
        assert!(matches!(e, Error::DtypeMismatch { .. }), "{msg}");
        assert!(
            msg.contains("'transformers.0.blocks.5.norm1.weight'") && msg.contains(label),
            "{msg}"
        );
        assert!(
            msg.contains("F32") && msg.contains("F16") && msg.contains("BF16"),
            "{msg}"
        );
    }
}

#[test]
fn differing_shared_copies_are_refused() {
    let (cfg, _, bytes) = sample();
    let file = edit(&bytes, |t| {
        let copy = t
            .get_mut("transformers.0.blocks.2.attn.qkv.weight")
            .unwrap();
        copy.data[100] ^= 1; // one bit of one weight
    });
    let (e, msg) = load_err(&file, &cfg);
    assert!(matches!(e, Error::SharedCopiesDiffer { .. }), "{msg}");
    assert!(
        msg.contains("'transformers.0.blocks.0.attn.qkv.weight'")
            && msg.contains("'transformers.0.blocks.2.attn.qkv.weight'"),
        "{msg}"
    );

    // -0.0 and 0.0 compare equal as floats but not bitwise.
    let file = edit(&bytes, |t| {
        for (name, v) in [
            ("transformers.1.blocks.12.coefficient3.bias", 0.0f32),
            ("transformers.1.blocks.14.coefficient3.bias", -0.0),
        ] {
            t.get_mut(name).unwrap().data = v.to_le_bytes().to_vec();
        }
    });
    let (e, msg) = load_err(&file, &cfg);
    assert!(matches!(e, Error::SharedCopiesDiffer { .. }), "{msg}");
    assert!(
        msg.contains("blocks.12.coefficient3.bias") && msg.contains("blocks.14.coefficient3.bias"),
        "{msg}"
    );
}

fn assert_bad_file(bytes: &[u8], cfg: &ModelConfig, what: &str) {
    match load(bytes, cfg) {
        Err(e @ Error::BadSafetensors { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(PATH) && msg.contains("not a valid safetensors file"),
                "{what}: {msg}"
            );
        }
        Err(e) => panic!("{what}: expected BadSafetensors, got {e}"),
        Ok(_) => panic!("{what}: loaded"),
    }
}

#[test]
fn truncated_files_are_refused() {
    let (cfg, _, bytes) = sample();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for len in [
        1,
        7,
        8,
        9,
        8 + header / 2,
        8 + header - 1,
        8 + header,
        8 + header + 1,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        assert_bad_file(&bytes[..len], &cfg, &format!("truncated to {len} bytes"));
    }
    // One byte too many is not a valid file either.
    let mut longer = bytes.clone();
    longer.push(0);
    assert_bad_file(&longer, &cfg, "one trailing byte");
}

#[test]
fn empty_and_garbage_files_are_refused() {
    let cfg = sret_t();
    assert_bad_file(&[], &cfg, "empty file");
    let mut r = Rng(5);
    for len in [1usize, 8, 9, 100, 4096, 100_000] {
        for _ in 0..4 {
            let bytes: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
            assert_bad_file(&bytes, &cfg, &format!("{len} random bytes"));
        }
    }
    // A plausible header length followed by garbage or broken JSON.
    for body in [
        &b"not json at all!"[..],
        b"{\"a\": 1}        ",
        b"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}",
    ] {
        let mut bytes = (body.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&[0; 4]);
        assert_bad_file(&bytes, &cfg, &String::from_utf8_lossy(body));
    }
}

#[test]
fn overflowing_header_lengths_are_refused() {
    let cfg = sret_t();
    for n in [
        u64::MAX,
        u64::MAX - 7,
        1 << 63,
        (usize::MAX as u64).wrapping_sub(3),
        100_000_001,
        1000,
    ] {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{\"pos_embed\":{}}");
        assert_bad_file(&bytes, &cfg, &format!("header length {n}"));
    }
}

#[test]
fn an_empty_safetensors_file_is_missing_everything() {
    let cfg = sret_t();
    let bytes = serialize(&Tensors::new());
    let (e, msg) = load_err(&bytes, &cfg);
    assert!(matches!(e, Error::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("'pos_embed'"), "{msg}");
}

// ------------------------------------------------------------------------------------------------
// Non-finite values
// ------------------------------------------------------------------------------------------------

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn captured() -> &'static Capture {
    static LOGGER: OnceLock<&'static Capture> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(logger).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Warn);
        logger
    })
}

#[test]
fn non_finite_values_load_with_a_warning() {
    let log = captured();
    let (cfg, _, bytes) = sample();
    let name = "transformers.1.blocks.5.mlp.fc2.bias";
    let file = edit(&bytes, |t| {
        let mut v = as_f32(&t[name]);
        v[3] = f32::NAN;
        v[7] = f32::NEG_INFINITY;
        t.get_mut(name).unwrap().data = f32s(&v);
    });
    let loaded = load(&file, &cfg).unwrap();
    let b = &loaded.stages[1].non_projs[2].fc2.bias;
    assert!(b[3].is_nan() && b[7] == f32::NEG_INFINITY);
    let warnings = log.0.lock().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(name) && w.contains(PATH) && w.contains('2')),
        "{warnings:?}"
    );
}

// ------------------------------------------------------------------------------------------------
// Saving checks the weights against the config
// ------------------------------------------------------------------------------------------------

#[test]
fn saving_refuses_weights_of_another_shape() {
    let (cfg, w, _) = sample();
    let mut short = w.clone();
    short.stages[2].non_projs[5].fc1.bias.pop();
    let e = to_safetensors_bytes(&short, &cfg).unwrap_err().to_string();
    assert!(e.contains("transformers.2.blocks.11.mlp.fc1.bias"), "{e}");

    let mut wide = w.clone();
    wide.stages[0].blocks[1].fc1.out_features = 231;
    let e = to_safetensors_bytes(&wide, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("transformers.0.blocks.4.mlp.fc1.weight") && e.contains("231"),
        "{e}"
    );

    let mut fewer = w.clone();
    fewer.stages[1].blocks.pop();
    assert!(to_safetensors_bytes(&fewer, &cfg).is_err());

    let mut no_pool = w.clone();
    no_pool.stages[0].pool = None;
    assert!(to_safetensors_bytes(&no_pool, &cfg).is_err());

    let mut stride = w;
    stride.stem[2].stride = 1;
    let e = to_safetensors_bytes(&stride, &cfg).unwrap_err().to_string();
    assert!(e.contains("patch_embed.conv3"), "{e}");

    let lt = ModelConfig::by_name("sret_lt").unwrap();
    assert!(to_safetensors_bytes(&random_weights(&sret_t(), 1), &lt).is_err());
}

/// A header naming one tensor twice (JSON allows it; a map keeps one of the two) is refused.
#[test]
fn duplicate_tensor_names_are_refused() {
    let (cfg, _, bytes) = sample();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&bytes[8..8 + header])
        .unwrap()
        .trim_end();
    // Repeat the first entry at the end, pointing at the same data.
    let body = text.strip_prefix('{').unwrap().strip_suffix('}').unwrap();
    // Top-level entries: split at commas outside any bracket.
    let mut entries = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in body.char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&body[start..]);
    let first = entries
        .iter()
        .find(|e| e.contains("data_offsets"))
        .expect("a tensor entry");
    let doubled = format!("{{{body},{first}}}");
    let mut out = (doubled.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(doubled.as_bytes());
    out.extend_from_slice(&bytes[8 + header..]);
    let (_, msg) = load_err(&out, &cfg);
    assert!(msg.contains("duplicate") || msg.contains("twice"), "{msg}");
}

/// DeiT and PiT: saving writes timm's state_dict exactly (names, shapes, nothing else) and
/// loading gives the same weights; PiT's original `pools.{s}` names load too, and a file
/// holding both spellings must agree.
#[test]
fn baselines_round_trip_in_timm_layout() {
    for name in VIT_MODEL_NAMES {
        let cfg = ModelConfig::by_name(name).unwrap();
        let w = sret_tome::model::synthetic_weights(&cfg, 77);
        let bytes = to_safetensors_bytes(&w, &cfg).unwrap();
        let t = parse(&bytes);
        let expected = expected_tensors(&cfg);
        assert_eq!(t.len(), expected.len(), "{name}");
        for (n, shape) in &expected {
            assert_eq!(&t[n].shape, shape, "{name}: {n}");
        }
        let path = std::path::Path::new("mem.safetensors");
        let back = load_safetensors_bytes(&bytes, path, &cfg).unwrap();
        assert!(back == w, "{name}: round trip changed the weights");
        if name.starts_with("pit") {
            assert!(t.contains_key("transformers.1.pool.conv.weight"));
            // The original layout: pools.{s}.
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let renamed: Vec<(String, safetensors::tensor::TensorView)> = st
                .iter()
                .map(|(n, v)| {
                    let n = n
                        .replace("transformers.1.pool.", "pools.0.")
                        .replace("transformers.2.pool.", "pools.1.");
                    (n, v)
                })
                .collect();
            let original = safetensors::serialize(renamed, None).unwrap();
            let back = load_safetensors_bytes(&original, path, &cfg).unwrap();
            assert!(back == w, "{name}: pools.N names load to the same weights");
            // Both spellings present and different: refused, naming both.
            let mut both: Vec<(String, safetensors::tensor::TensorView)> =
                st.iter().map(|(n, v)| (n.to_string(), v)).collect();
            // The conv's bias has the fc bias's shape but other values.
            both.push((
                "pools.0.fc.bias".into(),
                st.tensor("transformers.1.pool.conv.bias").unwrap(),
            ));
            let bytes = safetensors::serialize(both, None).unwrap();
            let err = load_safetensors_bytes(&bytes, path, &cfg)
                .unwrap_err()
                .to_string();
            assert!(err.contains("pools.0.fc.bias"), "{err}");
        }
    }
}
