use super::*;

/// Unpickles `body` (a `PROTO 2` header and `STOP` are added).
fn run(body: &[u8]) -> PResult<Pickle> {
    let mut data = vec![0x80, 2];
    data.extend_from_slice(body);
    data.push(b'.');
    Unpickler::new(&data).load()
}

fn run_err(body: &[u8]) -> PickleError {
    match run(body) {
        Ok(p) => panic!("expected an error, got {}", p.describe(p.root)),
        Err(e) => e,
    }
}

fn binunicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

/// A torch-style storage persistent id, BINPERSID included.
fn storage(class: &str, key: &str, numel: u8) -> Vec<u8> {
    let mut v = vec![b'('];
    v.extend(binunicode("storage"));
    v.extend(global("torch", class));
    v.extend(binunicode(key));
    v.extend(binunicode("cpu"));
    v.extend([b'K', numel, b't', b'Q']);
    v
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
fn tensor(class: &str, key: &str, numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut v = global("torch._utils", "_rebuild_tensor_v2");
    v.push(b'(');
    v.extend(storage(class, key, numel));
    v.extend([b'K', offset]);
    for dims in [size, stride] {
        v.push(b'(');
        for &d in dims {
            v.extend([b'K', d]);
        }
        v.push(b't');
    }
    v.push(0x89);
    v.extend(global("collections", "OrderedDict"));
    v.extend([b')', b'R', b't', b'R']);
    v
}

fn root_int(p: &Pickle) -> i64 {
    match p.root {
        Value::Int(i) => i,
        other => panic!("root is {other:?}"),
    }
}

fn root_items(p: &Pickle) -> Vec<Value> {
    match p.node(p.root) {
        Some(Node::List(v) | Node::Tuple(v) | Node::Set(v)) => v.clone(),
        other => panic!("root is {other:?}"),
    }
}

#[test]
fn integers() {
    assert_eq!(root_int(&run(b"K\xff").unwrap()), 255);
    assert_eq!(root_int(&run(b"M\x01\x02").unwrap()), 0x0201);
    assert_eq!(root_int(&run(b"J\xfe\xff\xff\xff").unwrap()), -2);
    assert_eq!(root_int(&run(b"\x8a\x00").unwrap()), 0);
    assert_eq!(root_int(&run(b"\x8a\x01\xff").unwrap()), -1);
    assert_eq!(root_int(&run(b"\x8a\x02\xff\x00").unwrap()), 255);
    assert_eq!(
        root_int(&run(b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap()),
        i64::MAX
    );
}

#[test]
fn long_integers() {
    // 2^64 - 1 needs 9 bytes and does not fit in i64.
    let p = run(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00").unwrap();
    assert!(matches!(p.node(p.root), Some(Node::BigInt)));
    // i64::MIN in 9 bytes (sign-extended) fits.
    let p = run(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\xff").unwrap();
    assert_eq!(root_int(&p), i64::MIN);
    // LONG4.
    let p = run(b"\x8b\x02\x00\x00\x00\x34\x12").unwrap();
    assert_eq!(root_int(&p), 0x1234);
    // Text INT / LONG.
    assert_eq!(root_int(&run(b"I-17\n").unwrap()), -17);
    assert_eq!(run(b"I01\n").unwrap().root, Value::Bool(true));
    assert_eq!(root_int(&run(b"L42L\n").unwrap()), 42);
    let p = run(b"L123456789012345678901234567890L\n").unwrap();
    assert!(matches!(p.node(p.root), Some(Node::BigInt)));
}

#[test]
fn floats_and_constants() {
    let p = run(b"G\x3f\xf8\x00\x00\x00\x00\x00\x00").unwrap();
    assert_eq!(p.root, Value::Float(1.5));
    assert_eq!(run(b"F-0.25\n").unwrap().root, Value::Float(-0.25));
    assert_eq!(run(b"N").unwrap().root, Value::None);
    assert_eq!(run(b"\x88").unwrap().root, Value::Bool(true));
    assert_eq!(run(b"\x89").unwrap().root, Value::Bool(false));
}

#[test]
fn strings_and_bytes() {
    let p = run(&binunicode("héllo")).unwrap();
    assert_eq!(p.str(p.root), Some("héllo"));
    let p = run(b"\x8c\x02ab").unwrap();
    assert_eq!(p.str(p.root), Some("ab"));
    let p = run(b"\x8d\x01\x00\x00\x00\x00\x00\x00\x00z").unwrap();
    assert_eq!(p.str(p.root), Some("z"));
    let p = run(b"U\x03abc").unwrap();
    assert_eq!(p.str(p.root), Some("abc"));
    let p = run(b"T\x01\x00\x00\x00\xff").unwrap();
    assert!(matches!(p.node(p.root), Some(Node::Bytes(b)) if b == &[0xff]));
    for body in [
        &b"B\x02\x00\x00\x00\x01\x02"[..],
        b"C\x02\x01\x02",
        b"\x8e\x02\x00\x00\x00\x00\x00\x00\x00\x01\x02",
        b"\x96\x02\x00\x00\x00\x00\x00\x00\x00\x01\x02",
    ] {
        let p = run(body).unwrap();
        assert!(matches!(p.node(p.root), Some(Node::Bytes(b)) if b == &[1, 2]));
    }
    let e = run_err(b"X\x02\x00\x00\x00\xff\xfe");
    assert!(e.why.contains("UTF-8"), "{e}");
}

#[test]
fn tuples() {
    assert!(root_items(&run(b")").unwrap()).is_empty());
    assert_eq!(root_items(&run(b"K\x01\x85").unwrap()), [Value::Int(1)]);
    assert_eq!(
        root_items(&run(b"K\x01K\x02\x86").unwrap()),
        [Value::Int(1), Value::Int(2)]
    );
    assert_eq!(
        root_items(&run(b"K\x01K\x02K\x03\x87").unwrap()),
        [Value::Int(1), Value::Int(2), Value::Int(3)]
    );
    assert_eq!(
        root_items(&run(b"(K\x01K\x02K\x03K\x04t").unwrap()).len(),
        4
    );
    // TUPLE2 cannot reach below a MARK.
    let e = run_err(b"K\x01(K\x02\x86");
    assert!(e.why.contains("underflow"), "{e}");
}

#[test]
fn lists_and_sets() {
    assert_eq!(
        root_items(&run(b"]K\x01aK\x02a").unwrap()),
        [Value::Int(1), Value::Int(2)]
    );
    assert_eq!(
        root_items(&run(b"](K\x01K\x02e").unwrap()),
        [Value::Int(1), Value::Int(2)]
    );
    assert_eq!(root_items(&run(b"(K\x01l").unwrap()), [Value::Int(1)]);
    assert_eq!(
        root_items(&run(b"\x8f(K\x01K\x02\x90").unwrap()),
        [Value::Int(1), Value::Int(2)]
    );
    assert_eq!(root_items(&run(b"(K\x07\x91").unwrap()), [Value::Int(7)]);
    let e = run_err(b"K\x01K\x02a");
    assert!(e.why.contains("cannot append to an int"), "{e}");
}

#[test]
fn dicts() {
    let check = |body: &[u8]| {
        let p = run(body).unwrap();
        let Some(Node::Dict(pairs)) = p.node(p.root) else {
            panic!("not a dict")
        };
        let e = p.str_entries(pairs);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], ("a".to_string(), Value::Int(3)));
        assert_eq!(e[1], ("b".to_string(), Value::Int(2)));
    };
    let a = binunicode("a");
    let b = binunicode("b");
    // SETITEM, with a repeated key keeping its first position and its last value.
    check(&[&b"}"[..], &a, b"K\x01s", &b, b"K\x02s", &a, b"K\x03s"].concat());
    // SETITEMS.
    check(&[&b"}("[..], &a, b"K\x01", &b, b"K\x02", &a, b"K\x03u"].concat());
    // DICT.
    check(&[&b"("[..], &a, b"K\x03", &b, b"K\x02d"].concat());
    let e = run_err(&[&b"}("[..], &a, b"u"].concat());
    assert!(e.why.contains("odd number"), "{e}");
    let e = run_err(&[&b"K\x01"[..], &a, b"K\x01s"].concat());
    assert!(e.why.contains("cannot set items of an int"), "{e}");
}

#[test]
fn memo() {
    // BINPUT / BINGET share the object: appending through the memo is visible.
    let p = run(b"]q\x00K\x01ah\x00\x86").unwrap();
    let items = root_items(&p);
    assert_eq!(items[0], items[1]);
    assert_eq!(
        root_items(&Pickle {
            root: items[0],
            nodes: p.nodes,
        }),
        [Value::Int(1)]
    );
    // LONG_BINPUT / LONG_BINGET with a large index.
    let p = run(b"K\x05r\x00\x00\x00\x80j\x00\x00\x00\x80\x86").unwrap();
    assert_eq!(root_items(&p), [Value::Int(5), Value::Int(5)]);
    // MEMOIZE numbers from the memo's length; PUT / GET are text.
    let p = run(b"K\x05\x94K\x06\x94h\x01h\x00\x86\x86").unwrap();
    assert_eq!(root_items(&p)[0], Value::Int(6));
    let p = run(b"K\x09p7\ng7\n\x86").unwrap();
    assert_eq!(root_items(&p), [Value::Int(9), Value::Int(9)]);
    let e = run_err(b"h\x03");
    assert!(e.why.contains("memo index 3 is not defined"), "{e}");
    assert_eq!(e.offset, 2);
    assert_eq!(e.op, Some(b'h'));
    let e = run_err(b"j\xff\xff\xff\xff");
    assert!(e.why.contains("memo index 4294967295"), "{e}");
    let e = run_err(b"q\x00");
    assert!(e.why.contains("underflow"), "{e}");
}

#[test]
fn stack_ops() {
    // POP, POP_MARK, DUP, MARK.
    assert_eq!(root_int(&run(b"K\x01K\x020").unwrap()), 1);
    assert_eq!(root_int(&run(b"K\x01(K\x02K\x031").unwrap()), 1);
    assert_eq!(root_items(&run(b"K\x012\x86").unwrap()), [Value::Int(1); 2]);
    // POP with nothing above the mark pops the mark (as CPython does).
    assert_eq!(root_int(&run(b"K\x01(0").unwrap()), 1);
    let e = run_err(b"1");
    assert!(e.why.contains("no MARK"), "{e}");
    let e = run_err(b"2");
    assert!(e.why.contains("underflow"), "{e}");
    // FRAME is accepted and ignored.
    assert_eq!(
        root_int(&run(b"\x95\x02\x00\x00\x00\x00\x00\x00\x00K\x04").unwrap()),
        4
    );
    // STOP on an empty stack.
    let e = Unpickler::new(b"\x80\x02.").load().unwrap_err();
    assert!(e.why.contains("underflow"), "{e}");
    assert_eq!(e.op, Some(b'.'));
}

#[test]
fn globals_reduce_newobj_build() {
    // An unknown call is opaque, whatever its arguments.
    let body = [
        global("os", "system"),
        binunicode("rm -rf /"),
        b"\x85R".to_vec(),
    ]
    .concat();
    let p = run(&body).unwrap();
    assert_eq!(p.describe(p.root), "a os.system object");
    // STACK_GLOBAL.
    let body = [
        binunicode("argparse"),
        binunicode("Namespace"),
        b"\x93)\x81}b".to_vec(),
    ]
    .concat();
    let p = run(&body).unwrap();
    assert_eq!(p.describe(p.root), "a argparse.Namespace object");
    // NEWOBJ_EX, INST, OBJ.
    let body = [global("a", "B"), b")}\x92".to_vec()].concat();
    assert!(matches!(
        run(&body).map(|p| p.describe(p.root)).unwrap().as_str(),
        "a a.B object"
    ));
    let p = run(b"(K\x01imod\ncls\n").unwrap();
    assert_eq!(p.describe(p.root), "a mod.cls object");
    let body = [b"(".to_vec(), global("m", "C"), b"K\x01o".to_vec()].concat();
    assert_eq!(
        run(&body).map(|p| p.describe(p.root)).unwrap(),
        "a m.C object"
    );
    // OrderedDict via REDUCE and NEWOBJ, BUILD leaves the object (the state dict's
    // `_metadata` is dropped).
    for call in [&b")R"[..], b")\x81"] {
        let body = [
            global("collections", "OrderedDict"),
            call.to_vec(),
            binunicode("k"),
            b"K\x01s}".to_vec(),
            binunicode("_metadata"),
            b"NsbN0".to_vec(),
        ]
        .concat();
        let p = run(&body).unwrap();
        let Some(Node::Dict(pairs)) = p.node(p.root) else {
            panic!("not a dict")
        };
        assert_eq!(p.str_entries(pairs), [("k".to_string(), Value::Int(1))]);
    }
    // OrderedDict([(k, v)]).
    let body = [
        global("collections", "OrderedDict"),
        b"(".to_vec(),
        binunicode("k"),
        b"K\x02\x86l\x85R".to_vec(),
    ]
    .concat();
    let p = run(&body).unwrap();
    let Some(Node::Dict(pairs)) = p.node(p.root) else {
        panic!("not a dict")
    };
    assert_eq!(p.str_entries(pairs), [("k".to_string(), Value::Int(2))]);
    // Items given to opaque objects are dropped, not fatal.
    let body = [
        global("m", "C"),
        b")R".to_vec(),
        binunicode("k"),
        b"K\x01s(K\x01e".to_vec(),
    ]
    .concat();
    assert!(run(&body).is_ok());
    // REDUCE of a known callable needs a tuple; an unknown one is opaque anyway.
    let e = run_err(
        &[
            global("torch._utils", "_rebuild_tensor_v2"),
            b"K\x01R".to_vec(),
        ]
        .concat(),
    );
    assert!(e.why.contains("not a tuple"), "{e}");
    assert!(run(&[global("m", "f"), b"K\x01R".to_vec()].concat()).is_ok());
}

#[test]
fn persistent_storage_and_tensor() {
    let body = tensor("HalfStorage", "7", 10, 2, &[2, 3], &[1, 2]);
    let p = run(&body).unwrap();
    let Some(Node::Tensor(t)) = p.node(p.root) else {
        panic!("not a tensor: {}", p.describe(p.root))
    };
    assert_eq!(t.storage.key, "7");
    assert_eq!(t.storage.dtype, DType::F16);
    assert_eq!(t.storage.numel, 10);
    assert_eq!(t.dtype, DType::F16);
    assert_eq!(
        (t.offset, &t.size[..], &t.stride[..]),
        (2, &[2, 3][..], &[1, 2][..])
    );
    assert!(!t.neg);
    // Last element at 2 + 1*1 + 2*2 = 7 < 10; with offset 5 it is 10: out of range.
    let e = run_err(&tensor("HalfStorage", "7", 10, 5, &[2, 3], &[1, 2]));
    assert!(e.why.contains("reaches past its storage"), "{e}");
    // 0-d tensor.
    let p = run(&tensor("FloatStorage", "0", 1, 0, &[], &[])).unwrap();
    assert!(matches!(p.node(p.root), Some(Node::Tensor(t)) if t.numel() == 1));
    let e = run_err(&tensor("FloatStorage", "0", 1, 1, &[], &[]));
    assert!(e.why.contains("reaches past"), "{e}");
    // Empty tensor: only the offset must lie inside.
    assert!(run(&tensor("FloatStorage", "0", 1, 1, &[0, 4], &[4, 1])).is_ok());
    // Size and stride of different lengths.
    let e = run_err(&tensor("FloatStorage", "0", 8, 0, &[2, 4], &[4]));
    assert!(e.why.contains("differ in length"), "{e}");
    // Unknown storage classes are kept (and never converted).
    let p = run(&tensor("ComplexFloatStorage", "0", 4, 0, &[4], &[1])).unwrap();
    assert!(matches!(p.node(p.root), Some(Node::Tensor(t)) if !t.dtype.is_float()));
}

#[test]
fn tensor_wrappers() {
    // _rebuild_parameter(tensor, requires_grad, hooks) is the tensor.
    let body = [
        global("torch._utils", "_rebuild_parameter"),
        tensor("FloatStorage", "0", 4, 0, &[4], &[1]),
        b"\x88)\x87R".to_vec(),
    ]
    .concat();
    let p = run(&body).unwrap();
    assert!(matches!(p.node(p.root), Some(Node::Tensor(_))));
    // _rebuild_from_type_v2(func, type, args, state).
    let t = tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
    // Split `t` into its callable (the GLOBAL) and its argument tuple (the rest minus 'R').
    let split = global("torch._utils", "_rebuild_tensor_v2").len();
    let body = [
        global("torch._tensor", "_rebuild_from_type_v2"),
        b"(".to_vec(),
        t[..split].to_vec(),
        global("torch", "Tensor"),
        t[split..t.len() - 1].to_vec(),
        b"}t".to_vec(),
        b"R".to_vec(),
    ]
    .concat();
    let p = run(&body).unwrap();
    assert!(
        matches!(p.node(p.root), Some(Node::Tensor(_))),
        "{}",
        p.describe(p.root)
    );
}

#[test]
fn tensor_v3_and_metadata() {
    // _rebuild_tensor_v3(UntypedStorage of 8 bytes, offset, (3,), (1,), False, hooks, torch.float16)
    let v3 = |offset: u8| {
        let mut body = global("torch._utils", "_rebuild_tensor_v3");
        body.push(b'(');
        body.extend(storage("UntypedStorage", "0", 8));
        body.extend([b'K', offset]);
        body.extend(b"(K\x03t(K\x01t\x89");
        body.extend(global("collections", "OrderedDict"));
        body.extend(b")R");
        body.extend(global("torch", "float16"));
        body.extend(b"tR");
        body
    };
    let p = run(&v3(1)).unwrap();
    let Some(Node::Tensor(t)) = p.node(p.root) else {
        panic!("not a tensor")
    };
    assert_eq!(
        (t.dtype.clone(), t.storage.dtype.clone()),
        (DType::F16, DType::U8)
    );
    // Offset 2 (in f16 elements) + 3 elements = 10 bytes > 8.
    let e = run_err(&v3(2));
    assert!(e.why.contains("reaches past"), "{e}");

    // metadata {'neg': True}.
    let t = tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
    let mut body = t[..t.len() - 2].to_vec();
    body.push(b'}');
    body.extend(binunicode("neg"));
    body.extend(b"\x88stR");
    let p = run(&body).unwrap();
    assert!(matches!(p.node(p.root), Some(Node::Tensor(t)) if t.neg));
}

#[test]
fn malformed_persistent_ids() {
    let e = run_err(b"K\x01Q");
    assert!(e.why.contains("not a tuple"), "{e}");
    let e = run_err(&[b"(".to_vec(), binunicode("module"), b"tQ".to_vec()].concat());
    assert!(
        e.why.contains("unsupported persistent id type 'module'"),
        "{e}"
    );
    let e = run_err(&[b"(".to_vec(), binunicode("storage"), b"K\x01tQ".to_vec()].concat());
    assert!(e.why.contains("fields"), "{e}");
    let mut body = vec![b'('];
    body.extend(binunicode("storage"));
    body.extend(global("os", "system"));
    body.extend(binunicode("0"));
    body.extend(binunicode("cpu"));
    body.extend(b"K\x01tQ");
    let e = run_err(&body);
    assert!(e.why.contains("not a torch storage class"), "{e}");
    // numel 2^62 of 4-byte floats overflows u64 bytes.
    let mut body = vec![b'('];
    body.extend(binunicode("storage"));
    body.extend(global("torch", "FloatStorage"));
    body.extend(binunicode("0"));
    body.extend(binunicode("cpu"));
    body.extend(b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40tQ");
    let e = run_err(&body);
    assert!(e.why.contains("overflows"), "{e}");
    let e = run_err(b"Pfoo\n");
    assert!(e.why.contains("text persistent ids"), "{e}");
}

#[test]
fn bad_input_is_an_error() {
    let e = Unpickler::new(b"\x80\x02\xff").load().unwrap_err();
    assert_eq!((e.offset, e.op), (2, None));
    assert!(e.why.contains("unknown opcode 0xff"), "{e}");
    assert!(e.to_string().contains("at byte 2"), "{e}");
    for op in [b'S', b'V', 0x82, 0x83, 0x84, 0x97, 0x98] {
        let e = Unpickler::new(&[0x80, 2, op, b'\n', b'.'])
            .load()
            .unwrap_err();
        assert!(e.why.contains("opcode"), "{e}");
    }
    let e = Unpickler::new(b"\x80\x06.").load().unwrap_err();
    assert!(e.why.contains("protocol 6"), "{e}");
    let e = Unpickler::new(b"\x80\x02K\x01").load().unwrap_err();
    assert!(e.why.contains("before STOP"), "{e}");
    let e = Unpickler::new(b"\x80\x02X\xff\xff\xff\xff")
        .load()
        .unwrap_err();
    assert!(e.why.contains("only 0 remain"), "{e}");
    let e = Unpickler::new(b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff")
        .load()
        .unwrap_err();
    assert!(
        e.why.contains("needs 18446744073709551615 more bytes"),
        "{e}"
    );
    let e = Unpickler::new(b"\x80\x02cos\nsys").load().unwrap_err();
    assert!(e.why.contains("unterminated"), "{e}");
    assert!(Unpickler::new(b"").load().is_err());
    let e = run_err(b"R");
    assert!(e.why.contains("underflow"), "{e}");
    let e = run_err(b"t");
    assert!(e.why.contains("no MARK"), "{e}");
}

#[test]
fn limits() {
    // A million MARKs then nothing: within limits, fails at STOP (underflow), quickly.
    let body = vec![b'('; 1_000_000];
    assert!(run(&body).is_err());
    // Too many objects.
    let body = vec![b']'; MAX_PICKLE_OBJECTS + 1];
    let e = run_err(&body);
    assert!(
        e.why.contains("more than") || e.why.contains("deeper"),
        "{e}"
    );
    // Too many container items (appending None over and over).
    let mut body = b"]".to_vec();
    for _ in 0..(2 * MAX_PICKLE_OBJECTS + 2) {
        body.extend(b"Na");
    }
    let e = run_err(&body);
    assert!(e.why.contains("items"), "{e}");
}

#[test]
fn dimensions_keys_and_tensor_counts_are_capped() {
    let dims = [1u8; MAX_DIMS + 1];
    let e = run_err(&tensor("FloatStorage", "0", 1, 0, &dims, &dims));
    assert!(e.why.contains("33 dimensions, more than 32"), "{e}");
    assert!(run(&tensor("FloatStorage", "0", 1, 0, &dims[1..], &dims[1..])).is_ok());
    let long_key = "7".repeat(MAX_KEY_LEN + 1);
    let e = run_err(&tensor("FloatStorage", &long_key, 1, 0, &[], &[]));
    assert!(e.why.contains("storage key"), "{e}");

    // The same memoised call repeated: every REDUCE builds a tensor, until the cap.
    let t = tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
    let split = global("torch._utils", "_rebuild_tensor_v2").len();
    let mut body = t[..split].to_vec();
    body.extend(b"q\x00");
    body.extend(&t[split..t.len() - 1]);
    body.extend(b"q\x01R0");
    for _ in 0..MAX_TENSORS + 1 {
        body.extend(b"h\x00h\x01R0");
    }
    body.push(b'N');
    let e = run_err(&body);
    assert!(e.why.contains("more than 262144 tensors"), "{e}");
}

#[test]
fn memoised_keys_are_recognised_by_identity() {
    // d = {}; 100000 times d[k] = i with k one memoised string.
    let mut body = b"}".to_vec();
    body.extend(binunicode(&"k".repeat(1000)));
    body.extend(b"q\x01K\x00s");
    for i in 0..100_000u32 {
        body.extend(b"h\x01J");
        body.extend(i.to_le_bytes());
        body.push(b's');
    }
    let p = run(&body).unwrap();
    let Some(Node::Dict(pairs)) = p.node(p.root) else {
        panic!("not a dict")
    };
    assert_eq!(pairs.len(), 100_001);
    let e = p.str_entries(pairs);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1, Value::Int(99_999));
}

#[test]
fn self_reference_is_harmless() {
    // l = []; l.append(l); d = {}; d['d'] = d
    let p = run(b"]q\x00h\x00a0}q\x01X\x01\x00\x00\x00dh\x01s").unwrap();
    assert!(matches!(p.node(p.root), Some(Node::Dict(_))));
}

/// The names of the state dict's tensors.
fn parse_state(body: &[u8]) -> std::result::Result<Vec<String>, String> {
    let p = run(body).map_err(|e| e.to_string())?;
    let found = find_state_dict(&p)?;
    Ok(found.into_iter().map(|(name, _)| name).collect())
}

#[test]
fn state_dict_location() {
    let t = tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
    let sd = [
        b"}(".to_vec(),
        binunicode("w"),
        t.clone(),
        binunicode("n"),
        b"K\x01u".to_vec(),
    ]
    .concat();
    // Top level.
    let r = parse_state(&sd).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r, ["w"]);
    // Under each wrapper key, with other entries around.
    for key in STATE_DICT_KEYS {
        let body = [
            b"}(".to_vec(),
            binunicode("epoch"),
            b"K\x03".to_vec(),
            binunicode("optimizer"),
            b"}".to_vec(),
            binunicode(key),
            sd.clone(),
            b"u".to_vec(),
        ]
        .concat();
        let r = parse_state(&body).unwrap();
        assert_eq!(r.len(), 1, "{key}");
    }
    // `model` holding a pickled module, `state_dict` the dict: the dict wins.
    let body = [
        b"}(".to_vec(),
        binunicode("model"),
        global("m", "Net"),
        b")\x81".to_vec(),
        binunicode("state_dict"),
        sd.clone(),
        b"u".to_vec(),
    ]
    .concat();
    assert_eq!(parse_state(&body).unwrap().len(), 1);
    // Only a pickled module.
    let body = [
        b"}(".to_vec(),
        binunicode("model"),
        global("m", "Net"),
        b")\x81u".to_vec(),
    ]
    .concat();
    let e = parse_state(&body).unwrap_err();
    assert!(e.contains("'model' holds a m.Net object"), "{e}");
    // Not a dict at all.
    let e = parse_state(&[global("m", "Net"), b")\x81".to_vec()].concat()).unwrap_err();
    assert!(e.contains("holds a m.Net object, not a dict"), "{e}");
    let e = parse_state(b"}").unwrap_err();
    assert!(e.contains("keys: none"), "{e}");
    let e =
        parse_state(&[b"}".to_vec(), binunicode("a"), b"K\x01s".to_vec()].concat()).unwrap_err();
    assert!(e.contains("'a'"), "{e}");
}

fn view(dtype: DType, numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> TensorRef {
    TensorRef {
        storage: StorageRef {
            key: "0".into(),
            dtype: dtype.clone(),
            numel,
        },
        dtype,
        offset,
        size: size.to_vec(),
        stride: stride.to_vec(),
        neg: false,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn gather_views() {
    let storage: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let bytes = f32_bytes(&storage);
    // Contiguous with offset.
    let t = view(DType::F32, 24, 3, &[2, 2], &[2, 1]);
    assert_eq!(gather(&t, &bytes, false).unwrap(), [3.0, 4.0, 5.0, 6.0]);
    // Transpose of a [3, 4] matrix.
    let t = view(DType::F32, 24, 0, &[4, 3], &[1, 4]);
    assert_eq!(
        gather(&t, &bytes, false).unwrap(),
        [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]
    );
    // 3-d permuted with offset, a size-1 dimension with a huge stride, and an expanded
    // (stride 0) dimension.
    let t = view(DType::F32, 24, 1, &[2, 1, 3], &[12, u64::MAX / 2, 4]);
    assert_eq!(
        gather(&t, &bytes, false).unwrap(),
        [1.0, 5.0, 9.0, 13.0, 17.0, 21.0]
    );
    let t = view(DType::F32, 24, 2, &[3, 2], &[0, 1]);
    assert_eq!(
        gather(&t, &bytes, false).unwrap(),
        [2.0, 3.0, 2.0, 3.0, 2.0, 3.0]
    );
    // 0-d.
    let t = view(DType::F32, 24, 23, &[], &[]);
    assert_eq!(gather(&t, &bytes, false).unwrap(), [23.0]);
    // Empty.
    let t = view(DType::F32, 24, 0, &[0, 3], &[3, 1]);
    assert!(gather(&t, &bytes, false).unwrap().is_empty());
    // Negated.
    let mut t = view(DType::F32, 24, 1, &[2], &[1]);
    t.neg = true;
    assert_eq!(gather(&t, &bytes, false).unwrap(), [-1.0, -2.0]);
    // Past the end.
    let t = view(DType::F32, 24, 5, &[4, 3], &[1, 8]); // last = 5 + 3 + 16 = 24
    assert!(gather(&t, &bytes, false).is_err());
    let t = view(DType::F32, 24, 0, &[2, 2], &[u64::MAX, 1]);
    assert!(gather(&t, &bytes, false).is_err());
    // Shorter bytes than declared (never reached through the archive, still safe).
    let t = view(DType::F32, 24, 0, &[24], &[1]);
    assert!(gather(&t, &bytes[..20], false).is_err());
}

#[test]
fn gather_dtypes_and_byte_order() {
    let halves: [u16; 3] = [0x3c00, 0xc000, 0x0001]; // 1, -2, 2^-24
    let le: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    let be: Vec<u8> = halves.iter().flat_map(|h| h.to_be_bytes()).collect();
    let t = view(DType::F16, 3, 0, &[3], &[1]);
    let want = [1.0, -2.0, 2f32.powi(-24)];
    assert_eq!(gather(&t, &le, false).unwrap(), want);
    assert_eq!(gather(&t, &be, true).unwrap(), want);
    let bf: [u16; 2] = [0x3f80, 0xc040]; // 1, -3
    let le: Vec<u8> = bf.iter().flat_map(|h| h.to_le_bytes()).collect();
    let t = view(DType::BF16, 2, 0, &[2], &[1]);
    assert_eq!(gather(&t, &le, false).unwrap(), [1.0, -3.0]);
    let d: Vec<u8> = [0.5f64, -1.25]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let t = view(DType::F64, 2, 0, &[2], &[1]);
    assert_eq!(gather(&t, &d, true).unwrap(), [0.5, -1.25]);
    let f: Vec<u8> = [7.5f32].iter().flat_map(|x| x.to_be_bytes()).collect();
    let t = view(DType::F32, 1, 0, &[], &[]);
    assert_eq!(gather(&t, &f, true).unwrap(), [7.5]);
    let t = view(DType::I64, 1, 0, &[], &[]);
    assert!(gather(&t, &[0; 8], false).is_err());
}

#[test]
fn dtype_names() {
    for (class, dt) in [
        ("FloatStorage", DType::F32),
        ("HalfStorage", DType::F16),
        ("BFloat16Storage", DType::BF16),
        ("DoubleStorage", DType::F64),
        ("LongStorage", DType::I64),
        ("UntypedStorage", DType::U8),
    ] {
        assert_eq!(DType::from_storage_class(class), dt);
    }
    assert_eq!(DType::from_dtype_name("half"), DType::F16);
    assert_eq!(DType::from_dtype_name("float8_e4m3fn").size(), None);
    assert!(opcode_name(b'Q') == Some("BINPERSID") && opcode_name(0xff).is_none());
}

#[test]
fn safetensors_roundtrip() {
    let tensors: Vec<NamedTensor> = vec![
        ("a".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
        ("s".into(), vec![], vec![5.0]),
    ];
    let bytes = to_safetensors_bytes(&tensors).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st.tensor("a").unwrap();
    assert_eq!(a.shape(), &[2, 2]);
    assert_eq!(a.data(), &f32_bytes(&[1.0, 2.0, 3.0, 4.0])[..]);
    assert_eq!(st.tensor("s").unwrap().shape(), &[] as &[usize]);
    let dup = vec![tensors[0].clone(), tensors[0].clone()];
    assert!(to_safetensors_bytes(&dup).is_err());
    let wrong: Vec<NamedTensor> = vec![("a".into(), vec![3], vec![1.0])];
    assert!(to_safetensors_bytes(&wrong).is_err());
}

#[test]
fn formats_are_sniffed() {
    assert_eq!(detect_format(b"PK\x03\x04rest"), WeightFormat::Checkpoint);
    assert_eq!(detect_format(&LEGACY_MAGIC), WeightFormat::Checkpoint);
    assert_eq!(
        detect_format(b"\x08\x01\x00\x00"),
        WeightFormat::Safetensors
    );
    assert_eq!(detect_format(b""), WeightFormat::Safetensors);
}
