//! Reading PyTorch checkpoints without Python: real `torch.save` files
//! (`tests/fixtures/checkpoint/`, made by `tools/make_checkpoint_fixtures.py`), hand-made
//! malformed archives, and random mutations (errors, never a panic).

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sret_tome::io::checkpoint::{
    convert_to_safetensors, detect_format, load_checkpoint, load_checkpoint_bytes, load_weights,
    read_state_dict, read_state_dict_bytes, to_safetensors_bytes, NamedTensor, WeightFormat,
};
use sret_tome::io::safetensors::{load_safetensors, load_safetensors_bytes};
use sret_tome::model::ModelConfig;
use sret_tome::Error;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

const PATH: &str = "test.pth";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoint")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// An F32 safetensors file as name -> (shape, values).
fn expected(name: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = read_fixture(name);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name.to_string(), (view.shape().to_vec(), data))
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `got` holds exactly the tensors of `want` (after `rename`), bit for bit.
fn assert_tensors(
    what: &str,
    got: &[NamedTensor],
    want: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    rename: impl Fn(&str) -> String,
) {
    let mut names: Vec<String> = got.iter().map(|(n, _, _)| rename(n)).collect();
    names.sort();
    let want_names: Vec<String> = want.keys().cloned().collect();
    assert_eq!(names, want_names, "{what}: names");
    for (name, shape, data) in got {
        let (want_shape, want_data) = &want[&rename(name)];
        assert_eq!(shape, want_shape, "{what}: shape of {name}");
        assert_eq!(bits(data), bits(want_data), "{what}: values of {name}");
    }
}

fn bad_checkpoint(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::BadCheckpoint { path, why }) => {
            assert_eq!(path, Path::new(PATH));
            why
        }
        other => panic!("expected BadCheckpoint, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Real torch.save files
// ------------------------------------------------------------------------------------------------

/// The float entries of `dtypes.pth`, in the dict's order (the rest are skipped).
const DTYPES_ORDER: [&str; 19] = [
    "f32",
    "f16",
    "bf16",
    "f64",
    "scalar",
    "base",
    "transposed",
    "sliced",
    "column",
    "every_other",
    "expanded",
    "permuted",
    "half_transposed",
    "half_row",
    "empty",
    "neg",
    "param",
    "attr",
    "f16_special",
];

#[test]
fn dtypes_views_and_wrappers_decode_as_torch_loads_them() {
    let want = expected("dtypes.expected.safetensors");
    for file in ["dtypes.pth", "dtypes_big_endian.pth", "dtypes_deflated.pth"] {
        let got = read_state_dict(&fixture(file)).unwrap();
        let order: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(order, DTYPES_ORDER, "{file}: order");
        assert_tensors(file, &got, &want, str::to_string);
    }
    // Spot checks of what the file holds, independent of the expected file.
    let got = read_state_dict(&fixture("dtypes.pth")).unwrap();
    let get = |name: &str| got.iter().find(|(n, _, _)| n == name).unwrap();
    assert_eq!(get("scalar").1, Vec::<usize>::new());
    assert_eq!(get("scalar").2, [2.5]);
    assert_eq!(get("expanded").2, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    assert_eq!(get("neg").2, [-1.0, 2.0, -3.0]);
    assert_eq!(get("param").2, [0.5, -0.5]);
    assert_eq!(get("attr").2, [7.0, 8.0]);
    assert_eq!(get("empty").1, [0, 3]);
    let special = &get("f16_special").2;
    assert_eq!(special[1], -(2f32.powi(-24)));
    assert_eq!(special[2], 65504.0);
    assert_eq!(special[3], f32::INFINITY);
    assert_eq!(special[4].to_bits(), (-0.0f32).to_bits());
    let base = &get("base").2;
    let transposed = &get("transposed").2;
    for i in 0..4 {
        for j in 0..6 {
            assert_eq!(transposed[j * 4 + i], base[i * 6 + j]);
        }
    }
    assert_eq!(&get("sliced").2[..], &base[6..18]);
}

#[test]
fn pickle_protocol_4() {
    let want = expected("dtypes.expected.safetensors");
    let got = read_state_dict(&fixture("protocol4.pth")).unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["f32", "f16", "transposed", "sliced", "scalar", "param"]
    );
    for (name, shape, data) in &got {
        assert_eq!(shape, &want[name].0, "{name}");
        assert_eq!(bits(data), bits(&want[name].1), "{name}");
    }
}

#[test]
fn training_checkpoint_layouts() {
    let want = expected("small.expected.safetensors");
    for file in ["wrapped_model.pth", "wrapped_model_state.pth"] {
        let got = read_state_dict(&fixture(file)).unwrap();
        assert_tensors(file, &got, &want, str::to_string);
    }
    let got = read_state_dict(&fixture("wrapped_state_dict.pth")).unwrap();
    assert!(got.iter().all(|(n, _, _)| n.starts_with("module.")));
    assert_tensors("wrapped_state_dict.pth", &got, &want, |n| {
        n.strip_prefix("module.").unwrap().to_string()
    });
    // BatchNorm's int64 counter is skipped.
    assert!(!got
        .iter()
        .any(|(n, _, _)| n.ends_with("num_batches_tracked")));
}

#[test]
fn legacy_format_is_refused_clearly() {
    let bytes = read_fixture("legacy.pth");
    let why = bad_checkpoint(read_state_dict_bytes(&bytes, Path::new(PATH)));
    assert!(why.contains("legacy torch.save format"), "{why}");
    assert!(why.contains("re-save"), "{why}");
    assert_eq!(detect_format(&bytes), WeightFormat::Checkpoint);
}

// ------------------------------------------------------------------------------------------------
// The full SReT-T (distilled) layout
// ------------------------------------------------------------------------------------------------

/// The SReT fixture's tensors rebuilt from its manifest and pools by plain index arithmetic:
/// state-dict order, float tensors only.
fn sret_views_expected() -> Vec<NamedTensor> {
    let pools = expected("sret_t_distill_views.pools.safetensors");
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_fixture("sret_t_distill_views.manifest.json")).unwrap();
    let mut out = Vec::new();
    for m in manifest.as_array().unwrap() {
        if m.get("skipped").is_some() {
            continue;
        }
        let name = m["name"].as_str().unwrap().to_string();
        let pool = &pools[m["pool"].as_str().unwrap()].1;
        let dims = |k: &str| -> Vec<usize> {
            m[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        };
        let (shape, stride) = (dims("shape"), dims("stride"));
        let offset = m["offset"].as_u64().unwrap() as usize;
        let numel: usize = shape.iter().product();
        let data = (0..numel)
            .map(|flat| {
                let (mut rest, mut at) = (flat, offset);
                for d in (0..shape.len()).rev() {
                    at += (rest % shape[d]) * stride[d];
                    rest /= shape[d];
                }
                pool[at]
            })
            .collect();
        out.push((name, shape, data));
    }
    out
}

/// A safetensors file made with the safetensors crate alone.
fn safetensors_of(tensors: &[NamedTensor]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.as_str(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn full_sret_t_checkpoint_in_the_official_layout() {
    let path = fixture("sret_t_distill_views.pth");
    let want = sret_views_expected();
    let got = read_state_dict(&path).unwrap();
    let got_names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(got_names, want_names);
    for ((name, shape, data), (_, want_shape, want_data)) in got.iter().zip(&want) {
        assert_eq!(shape, want_shape, "{name}");
        assert_eq!(bits(data), bits(want_data), "{name}");
    }

    // Loading it gives the weights the equivalent safetensors file gives, by every route.
    let cfg = ModelConfig::by_name("sret_t_distill").unwrap();
    let reference = load_safetensors_bytes(&safetensors_of(&want), Path::new("ref"), &cfg).unwrap();
    assert_eq!(load_checkpoint(&path, &cfg).unwrap(), reference);
    assert_eq!(load_weights(&path, &cfg).unwrap(), reference);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        load_checkpoint_bytes(&bytes, &path, &cfg).unwrap(),
        reference
    );

    let out = std::env::temp_dir().join(format!(
        "sret-tome-checkpoint-{}.safetensors",
        std::process::id()
    ));
    let n = convert_to_safetensors(&path, &out).unwrap();
    assert_eq!(n, want.len());
    let converted = load_safetensors(&out, &cfg);
    let via_weights = load_weights(&out, &cfg);
    std::fs::remove_file(&out).ok();
    assert_eq!(converted.unwrap(), reference);
    assert_eq!(via_weights.unwrap(), reference);

    // The wrong model is refused by the loader with the checkpoint's path.
    let lt = ModelConfig::by_name("sret_lt").unwrap();
    match load_checkpoint(&path, &lt) {
        Err(Error::ShapeMismatch { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected a shape mismatch, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn to_safetensors_bytes_round_trips() {
    let got = read_state_dict(&fixture("dtypes.pth")).unwrap();
    let bytes = to_safetensors_bytes(&got).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), got.len());
    for (name, shape, data) in &got {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32);
        assert_eq!(v.shape(), &shape[..]);
        let back: Vec<u32> = v
            .data()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, bits(data), "{name}");
    }
}

// ------------------------------------------------------------------------------------------------
// Hand-made archives
// ------------------------------------------------------------------------------------------------

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn binunicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn int(v: u64) -> Vec<u8> {
    let mut out = vec![0x8a, 8];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

/// `{name: _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', numel), offset, size, stride,
/// False, OrderedDict())}` as torch.save pickles it.
fn state_dict_pickle(name: &str, numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
    p.extend(binunicode(name));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    p.extend(binunicode("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(binunicode("0"));
    p.extend(binunicode("cpu"));
    p.extend(int(numel));
    p.extend(b"tQ");
    p.extend(int(offset));
    for dims in [size, stride] {
        p.push(b'(');
        for &d in dims {
            p.extend(int(d));
        }
        p.push(b't');
    }
    p.extend(b"\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn checkpoint(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    zip_of(&[
        ("archive/data.pkl", pickle),
        ("archive/byteorder", &b"little"[..]),
        ("archive/data/0", storage),
        ("archive/version", &b"3\n"[..]),
    ])
}

fn read(bytes: &[u8]) -> Result<Vec<NamedTensor>, Error> {
    read_state_dict_bytes(bytes, Path::new(PATH))
}

#[test]
fn hand_made_checkpoint_reads() {
    let storage = floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let got = read(&checkpoint(
        &state_dict_pickle("w", 6, 1, &[2, 2], &[1, 2]),
        &storage,
    ))
    .unwrap();
    assert_eq!(
        got,
        [("w".to_string(), vec![2, 2], vec![2.0, 4.0, 3.0, 5.0])]
    );
    // Any archive prefix, and entries at the root.
    let pickle = state_dict_pickle("w", 6, 0, &[6], &[1]);
    for prefix in ["", "x/", "some name.pth/"] {
        let (pkl_name, storage_name) = (format!("{prefix}data.pkl"), format!("{prefix}data/0"));
        let bytes = zip_of(&[(&pkl_name, &pickle[..]), (&storage_name, &storage[..])]);
        assert_eq!(
            read(&bytes).unwrap()[0].2,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "{prefix:?}"
        );
    }
}

#[test]
fn malformed_archives_are_errors() {
    let storage = floats(&[1.0, 2.0, 3.0, 4.0]);
    let good = state_dict_pickle("w", 4, 0, &[4], &[1]);
    assert!(read(&checkpoint(&good, &storage)).is_ok());

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty file", vec![], "not a zip archive"),
        (
            "garbage",
            b"hello world, not a checkpoint".to_vec(),
            "not a zip archive",
        ),
        ("bare pickle", b"\x80\x04K\x01.".to_vec(), "bare pickle"),
        (
            "zip without data.pkl",
            zip_of(&[("a/data/0", &storage[..])]),
            "no data.pkl",
        ),
        ("empty zip", zip_of(&[]), "no data.pkl"),
        (
            "missing storage entry",
            zip_of(&[("a/data.pkl", &good[..])]),
            "storage entry a/data/0 is missing",
        ),
        (
            "storage shorter than declared",
            checkpoint(&state_dict_pickle("w", 8, 0, &[4], &[1]), &storage),
            "holds 16 bytes",
        ),
        (
            "storage longer than declared",
            checkpoint(&state_dict_pickle("w", 2, 0, &[2], &[1]), &storage),
            "holds 16 bytes",
        ),
        (
            "huge declared storage",
            checkpoint(&state_dict_pickle("w", 1 << 40, 0, &[4], &[1]), &storage),
            "more than the limit",
        ),
        (
            "view past the storage (offset)",
            checkpoint(&state_dict_pickle("w", 4, 1, &[4], &[1]), &storage),
            "reaches past its storage",
        ),
        (
            "view past the storage (stride)",
            checkpoint(&state_dict_pickle("w", 4, 0, &[2, 2], &[3, 1]), &storage),
            "reaches past its storage",
        ),
        (
            "view whose extent overflows",
            checkpoint(
                &state_dict_pickle("w", 4, 0, &[3, 2], &[u64::MAX / 2, 1]),
                &storage,
            ),
            "reaches past its storage",
        ),
        (
            "size that overflows",
            checkpoint(
                &state_dict_pickle("w", 4, 0, &[1 << 40, 1 << 40], &[0, 0]),
                &storage,
            ),
            "overflows",
        ),
        (
            "expanded past the element cap",
            checkpoint(
                &state_dict_pickle("w", 4, 0, &[1 << 20, 1 << 20], &[0, 0]),
                &storage,
            ),
            "elements in all",
        ),
        (
            "unknown byte order",
            zip_of(&[
                ("a/data.pkl", &good[..]),
                ("a/byteorder", &b"middle"[..]),
                ("a/data/0", &storage[..]),
            ]),
            "unknown byte order 'middle'",
        ),
        (
            "top level is a list",
            checkpoint(b"\x80\x02]q\x00.", &storage),
            "holds a list, not a dict",
        ),
        (
            "unknown opcode",
            checkpoint(b"\x80\x02}\xfe.", &storage),
            "unknown opcode 0xfe (at byte 3)",
        ),
        (
            "memo index out of range",
            checkpoint(b"\x80\x02}h\x07.", &storage),
            "memo index 7 is not defined (opcode BINGET 0x68 at byte 3)",
        ),
        (
            "stack underflow",
            checkpoint(b"\x80\x02}s.", &storage),
            "stack underflow (opcode SETITEM 0x73 at byte 3)",
        ),
        (
            "truncated pickle",
            checkpoint(&good[..good.len() / 2], &storage),
            "data.pkl:",
        ),
        (
            "string longer than the pickle",
            checkpoint(b"\x80\x02X\x00\x00\x00\x40", &storage),
            "only 0 remain",
        ),
        (
            "TorchScript-like object",
            checkpoint(b"\x80\x02c__torch__\nNet\n)\x81}b.", &storage),
            "holds a __torch__.Net object",
        ),
    ];
    for (what, bytes, needle) in cases {
        let why = bad_checkpoint(read(&bytes));
        assert!(why.contains(needle), "{what}: {why}");
    }
}

#[test]
fn truncated_archives_are_errors() {
    let bytes = read_fixture("dtypes.pth");
    let mut cut = 0;
    while cut < bytes.len() {
        assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        cut += if bytes.len() - cut < 200 { 1 } else { 61 };
    }
}

// ------------------------------------------------------------------------------------------------
// Random mutations: any result, never a panic
// ------------------------------------------------------------------------------------------------

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A few random byte changes, insertions, deletions or a truncation.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if data.is_empty() {
            data.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(data.len());
        match rng.below(6) {
            0 | 1 => data[at] = rng.next() as u8,
            2 => data[at] ^= 1 << rng.below(8),
            3 => data.insert(at, rng.next() as u8),
            4 => {
                data.remove(at);
            }
            _ => {
                // Interesting integers for length and index fields.
                let v: [u8; 4] = match rng.below(4) {
                    0 => [0xff; 4],
                    1 => [0, 0, 0, 0x80],
                    2 => [0xff, 0xff, 0xff, 0x7f],
                    _ => [0; 4],
                };
                let end = (at + 4).min(data.len());
                data[at..end].copy_from_slice(&v[..end - at]);
            }
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let mut rng = Rng(0xC0FFEE);
    for name in ["dtypes.pth", "wrapped_model.pth", "protocol4.pth"] {
        let original = read_fixture(name);
        for _ in 0..150 {
            let mut bytes = original.clone();
            mutate(&mut rng, &mut bytes);
            let _ = read(&bytes);
        }
    }
}

#[test]
fn mutated_pickles_never_panic() {
    // Mutating data.pkl inside the archive (with a correct CRC), so that the unpickler itself
    // sees the damage rather than the zip reader's checksum.
    let mut rng = Rng(0x5EED);
    for name in ["dtypes.pth", "wrapped_model.pth", "protocol4.pth"] {
        let original = read_fixture(name);
        let mut zip = ZipArchive::new(Cursor::new(&original[..])).unwrap();
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            entries.push((f.name().to_string(), data));
        }
        let pkl = entries
            .iter()
            .position(|(n, _)| n.ends_with("/data.pkl"))
            .unwrap();
        let (mut ok, mut err) = (0, 0);
        for _ in 0..150 {
            let mut mutated = entries.clone();
            mutate(&mut rng, &mut mutated[pkl].1);
            let refs: Vec<(&str, &[u8])> = mutated
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            match read(&zip_of(&refs)) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
        assert!(err > 0 && ok + err == 150, "{name}: {ok} ok, {err} errors");
    }
}

#[test]
fn random_garbage_is_an_error() {
    let mut rng = Rng(7);
    for len in [1, 3, 4, 22, 100, 1000, 10_000] {
        for _ in 0..10 {
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(read(&bytes).is_err());
            // Garbage behind a zip signature or the legacy pickle header.
            bytes.splice(0..0, *b"PK\x03\x04");
            assert!(read(&bytes).is_err());
            let mut p = vec![0x80, 2];
            p.extend(&bytes[4..]);
            assert!(read(&checkpoint(&p, &[])).is_err());
        }
    }
}
