//! A minimal, safe unpickler for the `data.pkl` of a `torch.save` archive.
//!
//! It understands the opcodes that pickling (nested) dicts of tensors emits (protocol 2, and
//! the protocol 4/5 additions `FRAME`, `SHORT_BINUNICODE`, `MEMOIZE`, `STACK_GLOBAL`), and it
//! never runs code: a `GLOBAL` becomes a name, and `REDUCE` on a name is interpreted only for
//! the few callables a state dict needs (`OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, ...). Any other callable yields an opaque object, which is fine as a
//! non-tensor leaf (a step counter, a config) and is reported as such; tensor types we cannot
//! read (quantized, sparse, subclasses) are errors.
//!
//! Lists and dicts are kept in an arena and referenced by index, so the memo shares them by
//! reference as Python does (an item added after a `BINPUT` is seen through a later `BINGET`).

use std::collections::HashMap;

/// A storage referenced by `BINPERSID`: `('storage', torch.<Kind>Storage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Storage {
    /// The storage class name, e.g. `FloatStorage`.
    pub kind: String,
    /// The archive entry `data/<key>` holding the bytes.
    pub key: String,
    pub numel: usize,
}

/// A tensor view into a storage, as `_rebuild_tensor_v2` builds it (offset and strides in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: Storage,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(usize),
    Dict(usize),
    Global(String),
    Storage(Storage),
    Tensor(TensorRef),
    Object(String),
}

impl Value {
    fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(g) => format!("global {g}"),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Object(o) => format!("object {o}"),
        }
    }
}

/// A leaf of the unpickled tree, flattened to a dotted path.
#[derive(Clone, Debug, PartialEq)]
pub enum Leaf {
    Tensor(TensorRef),
    /// Anything else (int, string, opaque object, ...), described in words.
    Other(String),
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    lists: Vec<Vec<Value>>,
    dicts: Vec<Vec<(Value, Value)>>,
}

/// Deepest nesting the flattener follows (state dicts are 2-3 deep; this stops cycles).
const MAX_DEPTH: usize = 32;

/// Parses a pickle and flattens it to `(path, leaf)` pairs: nested dict keys are joined with
/// `.`, list/tuple items are indexed. A top-level tensor gets the empty path.
pub fn unpickle_flat(data: &[u8]) -> Result<Vec<(String, Leaf)>, String> {
    let mut u = Unpickler {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        lists: Vec::new(),
        dicts: Vec::new(),
    };
    let root = u.run()?;
    let mut out = Vec::new();
    u.flatten(&root, String::new(), 0, &mut out)?;
    Ok(out)
}

impl<'a> Unpickler<'a> {
    fn err<T>(&self, msg: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("pickle: {msg} (at byte {})", self.pos))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        match self.pos.checked_add(n).filter(|&e| e <= self.data.len()) {
            Some(e) => {
                let s = &self.data[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => self.err("unexpected end of data (truncated pickle)"),
        }
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&c| c == b'\n') else {
            return self.err("unterminated GLOBAL name");
        };
        let s = String::from_utf8(rest[..n].to_vec()).or_else(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: u64) -> Result<String, String> {
        let n = usize::try_from(n).or_else(|_| self.err("string length overflows"))?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).or_else(|_| self.err("string is not valid UTF-8"))
    }
    fn pop(&mut self) -> Result<Value, String> {
        // Values below the innermost MARK belong to the enclosing frame.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        Ok(self.stack.pop().unwrap())
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let Some(m) = self.marks.pop() else { return self.err("no MARK on the stack") };
        Ok(self.stack.split_off(m))
    }
    fn top_mut(&mut self) -> Result<&mut Value, String> {
        if self.stack.is_empty() {
            return self.err("stack underflow");
        }
        Ok(self.stack.last_mut().unwrap())
    }
    /// Tuples nest by value, so a hostile pickle could nest them deep enough to overflow the
    /// stack when dropped; state dicts nest a few levels at most.
    fn push_tuple(&mut self, items: Vec<Value>) -> Result<(), String> {
        fn depth(v: &Value, d: usize) -> usize {
            match v {
                Value::Tuple(t) if d <= MAX_DEPTH => t.iter().map(|c| depth(c, d + 1)).max().unwrap_or(d),
                _ => d,
            }
        }
        if items.iter().map(|c| depth(c, 1)).max().unwrap_or(0) > MAX_DEPTH {
            return self.err(format!("tuples nested deeper than {MAX_DEPTH}"));
        }
        self.stack.push(Value::Tuple(items));
        Ok(())
    }
    fn new_dict(&mut self, items: Vec<(Value, Value)>) -> Value {
        self.dicts.push(items);
        Value::Dict(self.dicts.len() - 1)
    }
    fn new_list(&mut self, items: Vec<Value>) -> Value {
        self.lists.push(items);
        Value::List(self.lists.len() - 1)
    }
    fn memo_get(&mut self, i: u32) -> Result<(), String> {
        match self.memo.get(&i) {
            Some(v) => {
                let v = v.clone();
                self.stack.push(v);
                Ok(())
            }
            None => self.err(format!("memo key {i} not found")),
        }
    }
    fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self.top_mut()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }
    fn set_items(&mut self, target: usize, items: Vec<Value>) -> Result<(), String> {
        if items.len() % 2 == 1 {
            return self.err("SETITEMS with an odd number of items");
        }
        let Some(Value::Dict(d)) = self.stack.get(target).cloned() else {
            return self.err("SETITEM(S) on a value that is not a dict");
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            self.dicts[d].push((k, v));
        }
        Ok(())
    }
    fn append_items(&mut self, target: usize, items: Vec<Value>) -> Result<(), String> {
        let Some(Value::List(l)) = self.stack.get(target).cloned() else {
            return self.err("APPEND(S) on a value that is not a list");
        };
        self.lists[l].extend(items);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: only a hint for buffered readers
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top_mut()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return self.err(format!("LONG1 integer of {n} bytes is too large"));
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xFF; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())));
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                // Python 2 strings (SHORT_BINSTRING, BINSTRING) read as text.
                b'U' => {
                    let n = self.u8()? as u64;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'T' => {
                    let n = self.u32()? as u64;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return self.err("stack underflow in TUPLEn");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_tuple(items)?;
                }
                b']' => {
                    let v = self.new_list(Vec::new());
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_list(items);
                    self.stack.push(v);
                }
                b'a' => {
                    let v = self.pop()?;
                    let t = self.stack.len().checked_sub(1).ok_or("pickle: APPEND on an empty stack")?;
                    self.append_items(t, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let t = self.stack.len().checked_sub(1).ok_or("pickle: APPENDS on an empty stack")?;
                    self.append_items(t, items)?;
                }
                b'}' => {
                    let v = self.new_dict(Vec::new());
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.new_dict(Vec::new());
                    self.stack.push(v);
                    let t = self.stack.len() - 1;
                    self.set_items(t, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let t = self.stack.len().checked_sub(1).ok_or("pickle: SETITEM on an empty stack")?;
                    self.set_items(t, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let t = self.stack.len().checked_sub(1).ok_or("pickle: SETITEMS on an empty stack")?;
                    self.set_items(t, items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(format!("{m}.{n}"))),
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s = self.persistent_load(pid)?;
                    self.stack.push(Value::Storage(s));
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD sets an object's state; for dicts (OrderedDict's `_metadata`),
                    // tensors and opaque objects the state carries nothing we need.
                    let _state = self.pop()?;
                    self.top_mut()?;
                }
                _ => {
                    self.pos -= 1;
                    return self.err(format!(
                        "unsupported opcode 0x{op:02x}: this is not a torch.save state-dict pickle this reader understands"
                    ));
                }
            }
        }
    }

    fn persistent_load(&self, pid: Value) -> Result<Storage, String> {
        let Value::Tuple(t) = pid else {
            return self.err(format!("persistent id is a {}, expected a tuple", pid.kind()));
        };
        match t.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, Value::Int(numel)] if tag == "storage" => {
                let kind = ty.strip_prefix("torch.").unwrap_or(ty).to_string();
                let numel = usize::try_from(*numel).or_else(|_| self.err("negative storage size"))?;
                Ok(Storage { kind, key: key.clone(), numel })
            }
            _ => self.err("persistent id is not ('storage', type, key, location, numel)"),
        }
    }

    fn usizes(&self, v: &Value, what: &str) -> Result<Vec<usize>, String> {
        let items = match v {
            Value::Tuple(t) => t.clone(),
            Value::List(l) => self.lists[*l].clone(),
            _ => return self.err(format!("tensor {what} is a {}, expected a tuple", v.kind())),
        };
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => self.err(format!("tensor {what} holds a non-integer or negative value")),
            })
            .collect()
    }

    /// Interprets `REDUCE`/`NEWOBJ` for the callables a state dict uses.
    fn call(&mut self, f: Value, args: Value) -> Result<Value, String> {
        let Value::Global(name) = f else { return self.err(format!("REDUCE on a {}, expected a global", f.kind())) };
        let Value::Tuple(args) = args else {
            return self.err(format!("REDUCE args are a {}, expected a tuple", args.kind()));
        };
        match name.as_str() {
            "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" => {
                let mut items = Vec::new();
                if let Some(Value::List(l)) = args.first() {
                    for pair in self.lists[*l].clone() {
                        match pair {
                            Value::Tuple(kv) if kv.len() == 2 => items.push((kv[0].clone(), kv[1].clone())),
                            _ => return self.err("OrderedDict items must be (key, value) pairs"),
                        }
                    }
                }
                Ok(self.new_dict(items))
            }
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let (Some(Value::Storage(s)), Some(Value::Int(off)), Some(size), Some(stride)) =
                    (args.first(), args.get(1), args.get(2), args.get(3))
                else {
                    return self.err(format!("{name} expects (storage, offset, size, stride, ...)"));
                };
                let offset = usize::try_from(*off).or_else(|_| self.err("negative storage offset"))?;
                let shape = self.usizes(size, "size")?;
                let stride = self.usizes(stride, "stride")?;
                if shape.len() != stride.len() {
                    return self.err(format!("tensor size {shape:?} and stride {stride:?} differ in rank"));
                }
                Ok(Value::Tensor(TensorRef { storage: s.clone(), offset, shape, stride }))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => self.err(format!("{name} without a tensor argument")),
            },
            "torch._utils._rebuild_from_type_v2" => {
                // (func, new_type, args, state): a tensor subclass; rebuild the plain tensor.
                match (args.first(), args.get(2)) {
                    (Some(func @ Value::Global(f)), Some(inner @ Value::Tuple(_)))
                        if f != "torch._utils._rebuild_from_type_v2" =>
                    {
                        self.call(func.clone(), inner.clone())
                    }
                    _ => self.err("_rebuild_from_type_v2 with unexpected arguments"),
                }
            }
            "torch.Size" => Ok(args.first().cloned().unwrap_or(Value::Tuple(Vec::new()))),
            "_codecs.encode" => match args.first() {
                // Protocol 2 pickles Python 3 bytes as _codecs.encode(text, 'latin1').
                Some(Value::Str(s)) => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())),
                _ => self.err("_codecs.encode without a string"),
            },
            n if n.starts_with("torch._utils.")
                || n.starts_with("torch._tensor.")
                || n.starts_with("torch.distributed.") =>
            {
                self.err(format!("unsupported tensor type `{n}` (only dense CPU tensors are read)"))
            }
            n => Ok(Value::Object(n.to_string())),
        }
    }

    fn flatten(&self, v: &Value, path: String, depth: usize, out: &mut Vec<(String, Leaf)>) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("pickle: nesting deeper than {MAX_DEPTH} at `{path}` (cyclic or not a state dict)"));
        }
        let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
        match v {
            Value::Dict(d) => {
                for (k, val) in &self.dicts[*d] {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        other => return Err(format!("pickle: dict key of type {} at `{path}`", other.kind())),
                    };
                    self.flatten(val, join(&key), depth + 1, out)?;
                }
            }
            Value::List(l) => {
                for (i, val) in self.lists[*l].iter().enumerate() {
                    self.flatten(val, join(&i.to_string()), depth + 1, out)?;
                }
            }
            Value::Tuple(t) => {
                for (i, val) in t.iter().enumerate() {
                    self.flatten(val, join(&i.to_string()), depth + 1, out)?;
                }
            }
            Value::Tensor(t) => out.push((path, Leaf::Tensor(t.clone()))),
            Value::Int(i) => out.push((path, Leaf::Other(format!("int {i}")))),
            Value::Float(f) => out.push((path, Leaf::Other(format!("float {f}")))),
            Value::Str(s) => out.push((path, Leaf::Other(format!("str {s:?}")))),
            Value::Bool(b) => out.push((path, Leaf::Other(format!("bool {b}")))),
            Value::Bytes(b) => out.push((path, Leaf::Other(format!("bytes ({} bytes)", b.len())))),
            other => out.push((path, Leaf::Other(other.kind()))),
        }
        Ok(())
    }
}
