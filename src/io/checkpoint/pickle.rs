//! The pickle virtual machine: an arena of values, the opcodes `torch.save` emits, and the
//! handful of callables it needs, interpreted without executing anything.

use super::*;

/// A pickled value: immediates inline, everything else an index into [`Pickle::nodes`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(u32),
}

#[derive(Debug)]
pub(super) enum Node {
    Str(String),
    Bytes(Vec<u8>),
    /// An integer that does not fit in i64 (its value is not kept).
    BigInt,
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// `module.name`: two `Str` nodes.
    Global(Value, Value),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
    /// The result of a call the unpickler does not interpret: the callable or class (usually
    /// a `Global`).
    Object(Value),
}

/// The result of unpickling: the arena and the root value.
#[derive(Debug)]
pub(super) struct Pickle {
    pub(super) nodes: Vec<Node>,
    pub(super) root: Value,
}

impl Pickle {
    pub(super) fn node(&self, v: Value) -> Option<&Node> {
        match v {
            Value::Ref(i) => self.nodes.get(i as usize),
            _ => None,
        }
    }

    pub(super) fn str(&self, v: Value) -> Option<&str> {
        match self.node(v) {
            Some(Node::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub(super) fn describe(&self, v: Value) -> String {
        describe(&self.nodes, v)
    }

    /// A dict's string-keyed entries, Python-style: a repeated key keeps its first position and
    /// takes its last value. Other keys are dropped. (A key object repeated many times is
    /// recognised by its index, so long memoised keys are not hashed over and over.)
    pub(super) fn str_entries(&self, pairs: &[(Value, Value)]) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut by_node: HashMap<u32, usize> = HashMap::new();
        let mut by_text: HashMap<&str, usize> = HashMap::new();
        for &(k, v) in pairs {
            let Value::Ref(node) = k else { continue };
            let at = match by_node.get(&node) {
                Some(&i) => Some(i),
                None => {
                    let Some(key) = self.str(k) else { continue };
                    let at = by_text.get(key).copied();
                    let i = at.unwrap_or(out.len());
                    by_node.insert(node, i);
                    if at.is_none() {
                        by_text.insert(key, i);
                        out.push((key.to_string(), v));
                    }
                    at
                }
            };
            if let Some(i) = at {
                out[i].1 = v;
            }
        }
        out
    }
}

/// A short description of a value for messages (never recursive).
pub(super) fn describe(nodes: &[Node], v: Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Int(_) => "an int".into(),
        Value::Float(_) => "a float".into(),
        Value::Ref(i) => match nodes.get(i as usize) {
            None => "nothing".into(),
            Some(Node::Str(_)) => "a string".into(),
            Some(Node::Bytes(_)) => "bytes".into(),
            Some(Node::BigInt) => "an int".into(),
            Some(Node::List(_)) => "a list".into(),
            Some(Node::Tuple(_)) => "a tuple".into(),
            Some(Node::Dict(_)) => "a dict".into(),
            Some(Node::Set(_)) => "a set".into(),
            Some(Node::Global(..)) => match global_name(nodes, v) {
                Some((m, n)) => format!("the global {m}.{n}"),
                None => "a global".into(),
            },
            Some(Node::Storage(_)) => "a storage".into(),
            Some(Node::Tensor(_)) => "a tensor".into(),
            Some(Node::Object(class)) => match global_name(nodes, *class) {
                Some((m, n)) => format!("a {m}.{n} object"),
                None => "an object".into(),
            },
        },
    }
}

/// `(module, name)` of a `Global` node.
pub(super) fn global_name(nodes: &[Node], v: Value) -> Option<(&str, &str)> {
    let str_of = |v: Value| match v {
        Value::Ref(i) => match nodes.get(i as usize) {
            Some(Node::Str(s)) => Some(s.as_str()),
            _ => None,
        },
        _ => None,
    };
    match v {
        Value::Ref(i) => match nodes.get(i as usize) {
            Some(Node::Global(m, n)) => Some((str_of(*m)?, str_of(*n)?)),
            _ => None,
        },
        _ => None,
    }
}

/// Locates the state dict and lists its tensor entries.
pub(super) fn find_state_dict(
    p: &Pickle,
) -> std::result::Result<Vec<(String, &TensorRef)>, String> {
    let Some(Node::Dict(root)) = p.node(p.root) else {
        return Err(format!(
            "the checkpoint holds {}, not a dict (save model.state_dict(), not the model)",
            p.describe(p.root)
        ));
    };
    let top = p.str_entries(root);
    let mut state = None;
    for key in STATE_DICT_KEYS {
        if let Some(&(_, v)) = top.iter().find(|(k, _)| k == key) {
            if let Some(Node::Dict(pairs)) = p.node(v) {
                state = Some((pairs, key));
                break;
            }
        }
    }
    let (pairs, under) = match state {
        Some((pairs, key)) => (pairs, Some(key)),
        None => (root, None),
    };
    let entries = p.str_entries(pairs);
    let mut tensors = Vec::new();
    for (name, v) in entries {
        match p.node(v) {
            Some(Node::Tensor(t)) => tensors.push((name, &**t)),
            _ => log::debug!("skipping state dict entry '{name}': {}", p.describe(v)),
        }
    }
    if tensors.is_empty() {
        let mut keys: Vec<String> = top
            .iter()
            .take(12)
            .map(|(k, _)| format!("'{}'", k.chars().take(40).collect::<String>()))
            .collect();
        if top.len() > 12 {
            keys.push("...".into());
        }
        let described: Vec<String> = STATE_DICT_KEYS
            .iter()
            .filter_map(|key| {
                let (_, v) = top.iter().find(|(k, _)| k == key)?;
                Some(format!("'{key}' holds {}", p.describe(*v)))
            })
            .collect();
        return Err(match under {
            Some(key) => format!("the state dict under '{key}' holds no tensors"),
            None if described.is_empty() => format!(
                "found no state dict: the top-level dict (keys: {}) holds no tensors and none of the keys {:?}",
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") },
                STATE_DICT_KEYS
            ),
            None => format!("found no state dict: {}", described.join(", ")),
        });
    }
    Ok(tensors)
}

/// A malformed `data.pkl`: what, where, and the opcode at fault.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PickleError {
    pub(super) offset: usize,
    pub(super) op: Option<u8>,
    pub(super) why: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Some(op) => write!(
                f,
                "data.pkl: {} (opcode {} 0x{op:02x} at byte {})",
                self.why,
                opcode_name(op).unwrap_or("unknown"),
                self.offset
            ),
            None => write!(f, "data.pkl: {} (at byte {})", self.why, self.offset),
        }
    }
}

pub(super) type PResult<T> = std::result::Result<T, PickleError>;

/// The name of every opcode the unpickler implements (`None`: refused as unknown).
pub fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        _ => return None,
    })
}

/// Opcodes that exist but that `torch.save` never emits and the unpickler refuses.
pub(super) fn unsupported_opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'S' => "STRING",
        b'V' => "UNICODE",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// The pickle virtual machine (see the module docs). It builds values; it never calls
/// anything.
pub(super) struct Unpickler<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    /// Offset and opcode being executed, for messages.
    pub(super) at: usize,
    pub(super) op: u8,
    pub(super) stack: Vec<Value>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) nodes: Vec<Node>,
    /// Items stored in containers so far.
    pub(super) items: usize,
    /// Tensors and storages built so far.
    pub(super) tensors: usize,
    pub(super) storages: usize,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            at: 0,
            op: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            nodes: Vec::new(),
            items: 0,
            tensors: 0,
            storages: 0,
        }
    }

    pub(super) fn err<T>(&self, why: impl Into<String>) -> PResult<T> {
        Err(PickleError {
            offset: self.at,
            op: Some(self.op),
            why: why.into(),
        })
    }

    // --- input ---

    pub(super) fn take(&mut self, n: u64) -> PResult<&'a [u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return self.err(format!(
                "needs {n} more bytes but only {left} remain (truncated?)"
            ));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    pub(super) fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A text line (without its '\n').
    pub(super) fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated text argument (truncated?)");
        };
        self.pos += n + 1;
        match std::str::from_utf8(&rest[..n]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("text argument is not UTF-8"),
        }
    }

    pub(super) fn utf8(&self, b: &[u8]) -> PResult<String> {
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    // --- stack, memo, arena ---

    pub(super) fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    pub(super) fn push(&mut self, v: Value) -> PResult<()> {
        if self.stack.len() >= MAX_PICKLE_OBJECTS {
            return self.err(format!("stack deeper than {MAX_PICKLE_OBJECTS}"));
        }
        self.stack.push(v);
        Ok(())
    }

    pub(super) fn pop(&mut self) -> PResult<Value> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    pub(super) fn top(&self) -> PResult<Value> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        Ok(*self.stack.last().expect("checked"))
    }

    pub(super) fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return self.err("no MARK to pop to");
        };
        Ok(self.stack.split_off(mark))
    }

    pub(super) fn new_node(&mut self, node: Node) -> PResult<Value> {
        if self.nodes.len() >= MAX_PICKLE_OBJECTS {
            return self.err(format!("more than {MAX_PICKLE_OBJECTS} objects"));
        }
        self.nodes.push(node);
        Ok(Value::Ref((self.nodes.len() - 1) as u32))
    }

    pub(super) fn push_node(&mut self, node: Node) -> PResult<()> {
        let v = self.new_node(node)?;
        self.push(v)
    }

    pub(super) fn count_items(&mut self, n: usize) -> PResult<()> {
        self.items = self.items.saturating_add(n);
        if self.items > 2 * MAX_PICKLE_OBJECTS {
            return self.err(format!(
                "more than {} items in containers",
                2 * MAX_PICKLE_OBJECTS
            ));
        }
        Ok(())
    }

    pub(super) fn memo_put(&mut self, index: u32) -> PResult<()> {
        let v = self.top()?;
        if self.memo.len() >= MAX_PICKLE_OBJECTS && !self.memo.contains_key(&index) {
            return self.err(format!("more than {MAX_PICKLE_OBJECTS} memo entries"));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    pub(super) fn memo_get(&mut self, index: u32) -> PResult<()> {
        match self.memo.get(&index) {
            Some(&v) => self.push(v),
            None => self.err(format!("memo index {index} is not defined")),
        }
    }

    pub(super) fn node_mut(&mut self, v: Value) -> Option<&mut Node> {
        match v {
            Value::Ref(i) => self.nodes.get_mut(i as usize),
            _ => None,
        }
    }

    pub(super) fn node(&self, v: Value) -> Option<&Node> {
        match v {
            Value::Ref(i) => self.nodes.get(i as usize),
            _ => None,
        }
    }

    pub(super) fn global(&self, v: Value) -> Option<(&str, &str)> {
        global_name(&self.nodes, v)
    }

    pub(super) fn seq(&self, v: Value) -> Option<&[Value]> {
        match self.node(v) {
            Some(Node::Tuple(items) | Node::List(items)) => Some(items),
            _ => None,
        }
    }

    pub(super) fn kind(&self, v: Value) -> String {
        describe(&self.nodes, v)
    }

    // --- the machine ---

    pub(super) fn load(mut self) -> PResult<Pickle> {
        loop {
            self.at = self.pos;
            if self.pos >= self.data.len() {
                return Err(PickleError {
                    offset: self.pos,
                    op: None,
                    why: "ends before STOP (truncated?)".into(),
                });
            }
            self.op = self.data[self.pos];
            self.pos += 1;
            if self.op == b'.' {
                let root = self.pop()?;
                return Ok(Pickle {
                    nodes: self.nodes,
                    root,
                });
            }
            self.step()?;
        }
    }

    /// Runs one opcode. Long because it is one `match` with an arm per pickle opcode, each a
    /// few lines, as the protocol lists them.
    pub(super) fn step(&mut self) -> PResult<()> {
        match self.op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return self.err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                self.u64()?;
            }
            b'(' => {
                if self.marks.len() >= MAX_PICKLE_OBJECTS {
                    return self.err(format!("more than {MAX_PICKLE_OBJECTS} nested MARKs"));
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?;
                self.push(v)?;
            }

            // Immediates.
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Value::Int(i64::from(v)))?
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(i64::from(v)))?
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(i64::from(v)))?
            }
            0x8a => {
                let n = self.u8()?;
                let b = self.take(u64::from(n))?;
                self.push_long(b)?
            }
            0x8b => {
                let n = self.u32()?;
                let b = self.take(u64::from(n))?;
                self.push_long(b)?
            }
            b'I' => {
                let line = self.line()?;
                let v = match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => match s.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_) => return self.err(format!("bad INT argument '{s}'")),
                    },
                };
                self.push(v)?
            }
            b'L' => {
                let line = self.line()?;
                let digits = line.strip_suffix('L').unwrap_or(line);
                if digits.is_empty()
                    || !digits
                        .trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                {
                    return self.err(format!("bad LONG argument '{line}'"));
                }
                match digits.parse::<i64>() {
                    Ok(i) => self.push(Value::Int(i))?,
                    Err(_) => self.push_node(Node::BigInt)?,
                }
            }
            b'G' => {
                let b = self.take(8)?;
                let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                self.push(Value::Float(v))?
            }
            b'F' => {
                let line = self.line()?;
                match line.trim().parse::<f64>() {
                    Ok(v) => self.push(Value::Float(v))?,
                    Err(_) => return self.err(format!("bad FLOAT argument '{line}'")),
                }
            }

            // Strings and bytes.
            b'X' => {
                let n = self.u32()?;
                let s = self.take(u64::from(n))?;
                let s = self.utf8(s)?;
                self.push_node(Node::Str(s))?
            }
            0x8c => {
                let n = self.u8()?;
                let s = self.take(u64::from(n))?;
                let s = self.utf8(s)?;
                self.push_node(Node::Str(s))?
            }
            0x8d => {
                let n = self.u64()?;
                let s = self.take(n)?;
                let s = self.utf8(s)?;
                self.push_node(Node::Str(s))?
            }
            b'T' | b'U' => {
                // Python 2 `str`: a string if it is UTF-8, bytes otherwise.
                let n = if self.op == b'T' {
                    u64::from(self.u32()?)
                } else {
                    u64::from(self.u8()?)
                };
                let b = self.take(n)?;
                let node = match std::str::from_utf8(b) {
                    Ok(s) => Node::Str(s.to_string()),
                    Err(_) => Node::Bytes(b.to_vec()),
                };
                self.push_node(node)?
            }
            b'B' => {
                let n = self.u32()?;
                let b = self.take(u64::from(n))?;
                self.push_node(Node::Bytes(b.to_vec()))?
            }
            b'C' => {
                let n = self.u8()?;
                let b = self.take(u64::from(n))?;
                self.push_node(Node::Bytes(b.to_vec()))?
            }
            0x8e | 0x96 => {
                let n = self.u64()?;
                let b = self.take(n)?;
                self.push_node(Node::Bytes(b.to_vec()))?
            }

            // Containers.
            b')' => self.push_node(Node::Tuple(Vec::new()))?,
            b']' => self.push_node(Node::List(Vec::new()))?,
            b'}' => self.push_node(Node::Dict(Vec::new()))?,
            0x8f => self.push_node(Node::Set(Vec::new()))?,
            0x85..=0x87 => {
                let n = usize::from(self.op - 0x84);
                if self.stack.len() < self.floor() + n {
                    return self.err("stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.count_items(n)?;
                self.push_node(Node::Tuple(items))?
            }
            b't' => {
                let items = self.pop_mark()?;
                self.count_items(items.len())?;
                self.push_node(Node::Tuple(items))?
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.count_items(items.len())?;
                self.push_node(Node::List(items))?
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.count_items(items.len())?;
                self.push_node(Node::Set(items))?
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push_node(Node::Dict(pairs))?
            }
            b'a' => {
                let v = self.pop()?;
                self.extend(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend(items)?
            }
            0x90 => {
                let items = self.pop_mark()?;
                self.extend(items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.set_items(pairs)?
            }

            // Memo.
            b'q' => {
                let i = self.u8()?;
                self.memo_put(u32::from(i))?
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(i)?
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                self.memo_put(i)?
            }
            b'p' => {
                let line = self.line()?;
                match line.parse::<u32>() {
                    Ok(i) => self.memo_put(i)?,
                    Err(_) => return self.err(format!("bad memo index '{line}'")),
                }
            }
            b'h' => {
                let i = self.u8()?;
                self.memo_get(u32::from(i))?
            }
            b'j' => {
                let i = self.u32()?;
                self.memo_get(i)?
            }
            b'g' => {
                let line = self.line()?;
                match line.parse::<u32>() {
                    Ok(i) => self.memo_get(i)?,
                    Err(_) => return self.err(format!("bad memo index '{line}'")),
                }
            }

            // Globals and objects: symbolic only.
            b'c' => {
                let g = self.global_from_lines()?;
                self.push(g)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(Node::Str(_)), Some(Node::Str(_))) = (self.node(module), self.node(name))
                else {
                    return self.err("STACK_GLOBAL needs two strings");
                };
                self.push_node(Node::Global(module, name))?
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = self.reduce(func, args, true)?;
                self.push(v)?
            }
            0x81 => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                let v = self.instantiate(cls)?;
                self.push(v)?
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                let cls = self.pop()?;
                let v = self.instantiate(cls)?;
                self.push(v)?
            }
            b'i' => {
                let class = self.global_from_lines()?;
                self.pop_mark()?;
                self.push_node(Node::Object(class))?
            }
            b'o' => {
                let items = self.pop_mark()?;
                let Some(&cls) = items.first() else {
                    return self.err("OBJ without a class");
                };
                let v = self.instantiate(cls)?;
                self.push(v)?
            }
            b'b' => {
                // The state goes to the object's attributes or __setstate__, never to a
                // dict's items or a tensor's data: nothing to keep.
                let _state = self.pop()?;
                self.top()?;
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent_load(pid)?;
                self.push(v)?
            }
            b'P' => {
                self.line()?;
                return self.err("text persistent ids are not used by torch.save");
            }
            op => {
                return Err(PickleError {
                    offset: self.at,
                    op: None,
                    why: match unsupported_opcode_name(op) {
                        Some(name) => format!("unsupported opcode {name} 0x{op:02x}"),
                        None => format!("unknown opcode 0x{op:02x}"),
                    },
                })
            }
        }
        Ok(())
    }

    /// GLOBAL / INST: `module\nname\n` as a `Global` node.
    pub(super) fn global_from_lines(&mut self) -> PResult<Value> {
        let module = self.line()?.to_string();
        let name = self.line()?.to_string();
        let module = self.new_node(Node::Str(module))?;
        let name = self.new_node(Node::Str(name))?;
        self.new_node(Node::Global(module, name))
    }

    pub(super) fn push_long(&mut self, b: &[u8]) -> PResult<()> {
        // Two's complement, little-endian; fits in i64 if the bytes past the 8th only repeat
        // the sign.
        let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
        let fill = if negative { 0xff } else { 0x00 };
        let fits =
            b.len() <= 8 || (b[8..].iter().all(|&x| x == fill) && ((b[7] & 0x80 != 0) == negative));
        if !fits {
            return self.push_node(Node::BigInt);
        }
        let mut bytes = [fill; 8];
        let n = b.len().min(8);
        bytes[..n].copy_from_slice(&b[..n]);
        self.push(Value::Int(i64::from_le_bytes(bytes)))
    }

    pub(super) fn pairs(&mut self, items: Vec<Value>) -> PResult<Vec<(Value, Value)>> {
        if !items.len().is_multiple_of(2) {
            return self.err(format!("odd number of items ({}) for a dict", items.len()));
        }
        self.count_items(items.len())?;
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    /// APPEND(S) / ADDITEMS into the list or set on top of the stack (items given to an opaque
    /// object are dropped).
    pub(super) fn extend(&mut self, items: Vec<Value>) -> PResult<()> {
        let target = self.top()?;
        self.count_items(items.len())?;
        match self.node_mut(target) {
            Some(Node::List(v) | Node::Set(v)) => {
                v.extend(items);
                Ok(())
            }
            Some(Node::Object(_)) => Ok(()),
            _ => self.err(format!("cannot append to {}", self.kind(target))),
        }
    }

    /// SETITEM(S) into the dict on top of the stack (items given to an opaque object are
    /// dropped).
    pub(super) fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> PResult<()> {
        let target = self.top()?;
        self.count_items(2 * pairs.len())?;
        match self.node_mut(target) {
            Some(Node::Dict(d)) => {
                d.extend(pairs);
                Ok(())
            }
            Some(Node::Object(_)) => Ok(()),
            _ => self.err(format!("cannot set items of {}", self.kind(target))),
        }
    }

    /// NEWOBJ / OBJ: an `OrderedDict` becomes a dict, anything else an opaque object.
    pub(super) fn instantiate(&mut self, cls: Value) -> PResult<Value> {
        if self.global(cls) == Some(("collections", "OrderedDict")) {
            return self.new_node(Node::Dict(Vec::new()));
        }
        self.new_node(Node::Object(cls))
    }

    /// REDUCE: interprets the callables `torch.save` uses; anything else is opaque.
    pub(super) fn reduce(&mut self, func: Value, args: Value, outer: bool) -> PResult<Value> {
        let callable = match self.global(func) {
            Some(("torch._utils", "_rebuild_tensor")) => Callable::Tensor(TensorRebuild::V1),
            Some(("torch._utils", "_rebuild_tensor_v2")) => Callable::Tensor(TensorRebuild::V2),
            Some(("torch._utils", "_rebuild_tensor_v3")) => Callable::Tensor(TensorRebuild::V3),
            Some(("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")) => {
                Callable::Parameter
            }
            Some(("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type")) if outer => {
                Callable::FromType
            }
            Some(("collections", "OrderedDict")) => Callable::OrderedDict,
            _ => return self.new_node(Node::Object(func)),
        };
        // The first few arguments (all any of these callables takes) and their number.
        let Some((argc, argv)) = self
            .seq(args)
            .map(|a| (a.len(), a.iter().take(8).copied().collect::<Vec<Value>>()))
        else {
            return self.err(format!(
                "the arguments of {} are {}, not a tuple",
                callable.name(),
                self.kind(args)
            ));
        };
        match callable {
            Callable::Tensor(version) => self.rebuild_tensor(version, argc, &argv),
            Callable::Parameter => match argv.first() {
                Some(&data) => Ok(data),
                None => self.err("_rebuild_parameter without arguments"),
            },
            Callable::FromType => {
                // (func, type, args, state): the tensor is func(*args).
                let (Some(&inner), Some(&inner_args)) = (argv.first(), argv.get(2)) else {
                    return self.err("_rebuild_from_type_v2 needs (func, type, args, state)");
                };
                self.reduce(inner, inner_args, false)
            }
            Callable::OrderedDict => {
                // OrderedDict() or OrderedDict([(k, v), ...]).
                let mut pairs = Vec::new();
                if let Some(&items) = argv.first() {
                    let Some(items) = self.seq(items) else {
                        return self.err("the argument of OrderedDict is not a list of pairs");
                    };
                    let n = items.len();
                    for &item in items {
                        match self.seq(item) {
                            Some(&[k, v]) => pairs.push((k, v)),
                            _ => {
                                return self
                                    .err("the argument of OrderedDict is not a list of pairs")
                            }
                        }
                    }
                    self.count_items(2 * n)?;
                }
                self.new_node(Node::Dict(pairs))
            }
        }
    }

    /// `_rebuild_tensor(storage, offset, size, stride)`, `_v2(..., requires_grad, hooks[,
    /// metadata])`, `_v3(..., requires_grad, hooks, dtype[, metadata])`.
    pub(super) fn rebuild_tensor(
        &mut self,
        version: TensorRebuild,
        argc: usize,
        argv: &[Value],
    ) -> PResult<Value> {
        let name = Callable::Tensor(version).name();
        let (min_args, metadata_at) = match version {
            TensorRebuild::V1 => (4, None),
            TensorRebuild::V2 => (6, Some(6)),
            TensorRebuild::V3 => (7, Some(7)),
        };
        if argc < min_args || argc > min_args + usize::from(metadata_at.is_some()) {
            return self.err(format!(
                "{name} called with {argc} arguments, expected {min_args}{}",
                if metadata_at.is_some() {
                    " or one more"
                } else {
                    ""
                }
            ));
        }
        if self.tensors >= MAX_TENSORS {
            return self.err(format!("more than {MAX_TENSORS} tensors"));
        }
        let storage = match self.node(argv[0]) {
            Some(Node::Storage(s)) => (**s).clone(),
            _ => {
                return self.err(format!(
                    "{name}: the storage argument is {}",
                    self.kind(argv[0])
                ))
            }
        };
        let offset = match argv[1] {
            Value::Int(i) if i >= 0 => i as u64,
            other => {
                return self.err(format!(
                    "{name}: the storage offset is {}",
                    self.describe_int(other)
                ))
            }
        };
        let size = self.int_tuple(name, "size", argv[2])?;
        let stride = self.int_tuple(name, "stride", argv[3])?;
        let dtype = match version {
            TensorRebuild::V3 => match self.global(argv[6]) {
                Some(("torch", dt)) => DType::from_dtype_name(dt),
                _ => {
                    return self.err(format!(
                        "{name}: the dtype argument is {}",
                        self.kind(argv[6])
                    ))
                }
            },
            _ => storage.dtype.clone(),
        };
        let neg = match metadata_at.and_then(|i| argv.get(i)) {
            Some(&m) => match self.node(m) {
                // torch writes at most {'conj': ..., 'neg': ...}: look no further.
                Some(Node::Dict(pairs)) => pairs.iter().take(8).any(|&(k, v)| {
                    v == Value::Bool(true)
                        && matches!(self.node(k), Some(Node::Str(s)) if s == "neg")
                }),
                _ => false,
            },
            None => false,
        };
        let t = TensorRef {
            storage,
            dtype,
            offset,
            size,
            stride,
            neg,
        };
        if let Err(why) = t.check() {
            return self.err(format!("{name}: {why}"));
        }
        self.tensors += 1;
        self.new_node(Node::Tensor(Box::new(t)))
    }

    pub(super) fn describe_int(&self, v: Value) -> String {
        match v {
            Value::Int(i) => format!("{i}"),
            other => self.kind(other),
        }
    }

    /// A size or stride: a tuple of at most [`MAX_DIMS`] non-negative ints (counted as
    /// container items, since they are copied).
    pub(super) fn int_tuple(&mut self, func: &str, what: &str, v: Value) -> PResult<Vec<u64>> {
        let Some(items) = self.seq(v) else {
            return self.err(format!(
                "{func}: the {what} is {}, not a tuple",
                self.kind(v)
            ));
        };
        if items.len() > MAX_DIMS {
            return self.err(format!(
                "{func}: the {what} has {} dimensions, more than {MAX_DIMS}",
                items.len()
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for &item in items {
            match item {
                Value::Int(i) if i >= 0 => out.push(i as u64),
                other => {
                    return self.err(format!(
                        "{func}: the {what} holds {}, not a non-negative int",
                        self.describe_int(other)
                    ))
                }
            }
        }
        self.count_items(out.len())?;
        Ok(out)
    }

    /// BINPERSID: `('storage', storage_class, key, location, numel)`.
    pub(super) fn persistent_load(&mut self, pid: Value) -> PResult<Value> {
        let Some(items) = self.seq(pid) else {
            return self.err(format!("persistent id is {}, not a tuple", self.kind(pid)));
        };
        let first = items.first().copied().unwrap_or(Value::None);
        let typename = match self.node(first) {
            Some(Node::Str(s)) => s.as_bytes(),
            Some(Node::Bytes(b)) => b.as_slice(),
            _ => &[],
        };
        if typename != b"storage" {
            let shown: String = String::from_utf8_lossy(&typename[..typename.len().min(40)]).into();
            return self.err(format!("unsupported persistent id type '{shown}'"));
        }
        let [_, class, key, _location, numel] = *items else {
            return self.err(format!(
                "storage persistent id has {} fields, expected 5 (storage, class, key, location, numel)",
                items.len()
            ));
        };
        if self.storages >= MAX_TENSORS {
            return self.err(format!("more than {MAX_TENSORS} storages"));
        }
        let dtype = match self.global(class) {
            Some((module, class)) if module == "torch" || module.starts_with("torch.") => {
                DType::from_storage_class(class)
            }
            _ => {
                return self.err(format!(
                    "storage class is {}, not a torch storage class",
                    self.kind(class)
                ))
            }
        };
        let key = match (key, self.node(key)) {
            (_, Some(Node::Str(s))) if s.len() <= MAX_KEY_LEN => s.clone(),
            (Value::Int(i), _) => i.to_string(),
            (other, _) => {
                return self.err(format!(
                    "storage key is {}, not a string of at most {MAX_KEY_LEN} bytes",
                    self.kind(other)
                ))
            }
        };
        let numel = match numel {
            Value::Int(n) if n >= 0 => n as u64,
            other => {
                return self.err(format!(
                    "storage '{key}' has element count {}",
                    self.describe_int(other)
                ))
            }
        };
        let s = StorageRef { key, dtype, numel };
        if s.dtype.size().is_some() && s.nbytes().is_none() {
            return self.err(format!("storage '{}' size overflows", s.key));
        }
        self.storages += 1;
        self.new_node(Node::Storage(Box::new(s)))
    }
}

/// The callables REDUCE interprets.
#[derive(Clone, Copy, Debug)]
pub(super) enum Callable {
    Tensor(TensorRebuild),
    Parameter,
    FromType,
    OrderedDict,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum TensorRebuild {
    V1,
    V2,
    V3,
}

impl Callable {
    pub(super) fn name(self) -> &'static str {
        match self {
            Callable::Tensor(TensorRebuild::V1) => "_rebuild_tensor",
            Callable::Tensor(TensorRebuild::V2) => "_rebuild_tensor_v2",
            Callable::Tensor(TensorRebuild::V3) => "_rebuild_tensor_v3",
            Callable::Parameter => "_rebuild_parameter",
            Callable::FromType => "_rebuild_from_type_v2",
            Callable::OrderedDict => "OrderedDict",
        }
    }
}
