//! The pickle machine of [`super`]: the opcodes of torch's state dicts (protocols 2 to 5),
//! building values itself and running no code. Only the globals listed in the parent's docs
//! build anything; any other becomes an inert placeholder.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, Result};

use std::path::Path;

use super::{ElementType, MAX_TUPLE_DEPTH, MAX_WRAPPER_DEPTH, STATE_DICT_KEYS};

/// A storage as a persistent id names it; `offset` and `numel` select a view of the stored
/// storage `key` (legacy files only; otherwise `offset` is 0 and `numel` the whole storage).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) element: ElementType,
    pub(super) offset: usize,
    pub(super) numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    pub(super) storage: StorageRef,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// The globals the pickle machine builds values with; anything else is `Other`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildFromTypeV2,
    StorageClass(ElementType),
    Other(Rc<str>),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Global {
        match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Global::RebuildParameter
            }
            // torch 1.8 named the module `torch.tensor` (torch.load maps it the same way).
            ("torch._tensor" | "torch.tensor", "_rebuild_from_type_v2") => {
                Global::RebuildFromTypeV2
            }
            ("torch" | "torch.cuda", class) => match ElementType::from_storage_class(class) {
                Some(element) => Global::StorageClass(element),
                None => Global::Other(format!("{module}.{name}").into()),
            },
            _ => Global::Other(format!("{module}.{name}").into()),
        }
    }
}

/// A value on the pickle machine's stack. Lists and dicts are handles into the machine's
/// arenas, so that a container memoised before it was filled (as pickle always does) is seen
/// filled when fetched from the memo later. Everything else is immutable and shared (`Rc`), so
/// fetching a value from the memo costs the same whatever its size.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64, as little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// Items, and how deeply tuples nest in it (1 for a tuple of no tuples).
    Tuple(Rc<[Value]>, usize),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// An object of a class the reader does not build (named for error messages); inert.
    Opaque(Rc<str>),
}

/// How deeply tuples nest in `value` (a tuple knows its own depth, so this is O(1) even for
/// tuples that share parts through the memo).
pub(super) fn tuple_depth(value: &Value) -> usize {
    match value {
        Value::Tuple(_, depth) => *depth,
        _ => 0,
    }
}

/// What a pickle machine remembers across the pickles of one file.
pub(super) struct Unpickler<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    /// The file and part, for errors (`x.pth`, `x.pth:archive/data.pkl`).
    pub(super) source: String,
    pub(super) stack: Vec<Value>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) lists: Vec<Vec<Value>>,
    pub(super) dicts: Vec<Vec<(Value, Value)>>,
    /// Storages named by persistent ids: key -> (element type, element count).
    pub(super) storages: HashMap<String, (ElementType, usize)>,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(data: &'a [u8], source: String) -> Unpickler<'a> {
        Unpickler {
            data,
            pos: 0,
            source,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            lists: Vec::new(),
            dicts: Vec::new(),
            storages: HashMap::new(),
        }
    }

    pub(super) fn error(&self, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{} (byte {}): {message}", self.source, self.pos)
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(self.error(format!(
                "the pickle needs {n} more bytes but the data ends after {}: the file is truncated or corrupt",
                self.data.len() - self.pos
            )));
        }
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(super) fn length(&mut self, n: u64) -> Result<usize> {
        usize::try_from(n).map_err(|_| self.error("a length beyond the address space"))
    }

    pub(super) fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("a GLOBAL name without its newline: truncated or corrupt"))?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    pub(super) fn text(&mut self, n: usize) -> Result<String> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("a string that is not UTF-8"))
    }

    pub(super) fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("the pickle pops an empty stack: corrupt data"));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    pub(super) fn top(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("the pickle reads an empty stack: corrupt data"));
        }
        Ok(self.stack.last_mut().expect("checked above"))
    }

    /// The values pushed since the last MARK, which is removed.
    pub(super) fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.error("the pickle closes a MARK it never opened: corrupt data"))?;
        Ok(self.stack.split_off(mark))
    }

    pub(super) fn push_tuple(&mut self, items: Vec<Value>) -> Result<()> {
        let depth = 1 + items.iter().map(tuple_depth).max().unwrap_or(0);
        if depth > MAX_TUPLE_DEPTH {
            return Err(self.error(format!(
                "tuples nested deeper than {MAX_TUPLE_DEPTH}: not a state dict"
            )));
        }
        self.stack.push(Value::Tuple(items.into(), depth));
        Ok(())
    }

    pub(super) fn new_dict(&mut self, items: Vec<(Value, Value)>) -> Value {
        self.dicts.push(items);
        Value::Dict(self.dicts.len() - 1)
    }

    pub(super) fn memo_get(&self, index: u32) -> Result<Value> {
        self.memo.get(&index).cloned().ok_or_else(|| {
            self.error(format!(
                "memo entry {index} is read before it is written: corrupt data"
            ))
        })
    }

    pub(super) fn memo_put(&mut self, index: u32) -> Result<()> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    /// Adds key-value pairs to the dict on top of the stack (an object of a class the reader
    /// does not build takes them and drops them).
    pub(super) fn set_items(&mut self, pairs: Vec<Value>) -> Result<()> {
        if !pairs.len().is_multiple_of(2) {
            return Err(self.error("SETITEMS with an odd number of values: corrupt data"));
        }
        match self.top()?.clone() {
            Value::Dict(id) => {
                let mut pairs = pairs.into_iter();
                while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
                    self.dicts[id].push((key, value));
                }
                Ok(())
            }
            Value::Opaque(_) => Ok(()),
            other => Err(self.error(format!(
                "SETITEM on a {} rather than a dict: corrupt data",
                kind(&other)
            ))),
        }
    }

    pub(super) fn append_items(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()?.clone() {
            Value::List(id) => {
                self.lists[id].extend(items);
                Ok(())
            }
            Value::Opaque(_) => Ok(()),
            other => Err(self.error(format!(
                "APPEND on a {} rather than a list: corrupt data",
                kind(&other)
            ))),
        }
    }

    /// Runs one pickle up to its STOP and returns the value it builds. One match arm per
    /// opcode: the dispatch is the machine, and it reads best as one table, not split up.
    pub(super) fn load(&mut self) -> Result<Value> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        loop {
            let opcode_at = self.pos;
            let opcode = self.u8()?;
            match opcode {
                // PROTO
                0x80 => {
                    let version = self.u8()?;
                    if version > 5 {
                        return Err(
                            self.error(format!("pickle protocol {version} is newer than 5"))
                        );
                    }
                }
                // FRAME: a length hint only.
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if opcode == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = self.u32()? as i32;
                        usize::try_from(n)
                            .map_err(|_| self.error("LONG4 with a negative length"))?
                    };
                    let bytes = self.take(n)?;
                    self.stack.push(long_value(bytes));
                }
                // BINFLOAT: big-endian.
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v));
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' | 0x8c | 0x8d => {
                    let n = match opcode {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.length(n)?;
                    let text = self.text(n)?;
                    self.stack.push(Value::Str(text.into()));
                }
                // BINSTRING, SHORT_BINSTRING: Python 2 strings, which torch reads as text.
                b'T' | b'U' => {
                    let n = if opcode == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let bytes = self.take(n)?;
                    self.stack
                        .push(Value::Str(String::from_utf8_lossy(bytes).into()));
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8
                b'B' | b'C' | 0x8e => {
                    let n = match opcode {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.length(n)?;
                    let bytes = self.take(n)?;
                    self.stack.push(Value::Bytes(bytes.into()));
                }
                b')' => self.stack.push(Value::Tuple(Rc::new([]), 1)),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_tuple(items)?;
                }
                // TUPLE1, TUPLE2, TUPLE3
                0x85..=0x87 => {
                    let n = (opcode - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_tuple(items)?;
                }
                b']' => {
                    self.lists.push(Vec::new());
                    self.stack.push(Value::List(self.lists.len() - 1));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.lists.push(items);
                    self.stack.push(Value::List(self.lists.len() - 1));
                }
                // EMPTY_SET, FROZENSET: kept as lists (never part of a state dict).
                0x8f => {
                    self.lists.push(Vec::new());
                    self.stack.push(Value::List(self.lists.len() - 1));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.lists.push(items);
                    self.stack.push(Value::List(self.lists.len() - 1));
                }
                b'}' => {
                    let dict = self.new_dict(Vec::new());
                    self.stack.push(dict);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = self.new_dict(Vec::new());
                    self.stack.push(dict);
                    self.set_items(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let value = self.pop()?;
                    self.append_items(vec![value])?;
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?;
                }
                // GLOBAL
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack
                        .push(Value::Global(Global::resolve(&module, &name)));
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.error("STACK_GLOBAL without two strings: corrupt data"));
                    };
                    self.stack
                        .push(Value::Global(Global::resolve(&module, &name)));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = self.call(callable, args)?;
                    self.stack.push(value);
                }
                // NEWOBJ, NEWOBJ_EX: instances of classes; only OrderedDict is built.
                0x81 | 0x92 => {
                    if opcode == 0x92 {
                        self.pop()?;
                    }
                    self.pop()?;
                    let class = self.pop()?;
                    let value = match class {
                        Value::Global(Global::OrderedDict) => self.new_dict(Vec::new()),
                        other => Value::Opaque(describe_callable(&other).into()),
                    };
                    self.stack.push(value);
                }
                // BUILD: sets attributes (an OrderedDict's `_metadata`, an object's `__dict__`),
                // which a state dict does not need.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.stack.push(storage);
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' => {
                    let index = self.u8()? as u32;
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index =
                        u32::try_from(self.memo.len()).map_err(|_| self.error("memo overflow"))?;
                    self.memo_put(index)?;
                }
                // BINGET, LONG_BINGET
                b'h' => {
                    let index = self.u8()? as u32;
                    let value = self.memo_get(index)?;
                    self.stack.push(value);
                }
                b'j' => {
                    let index = self.u32()?;
                    let value = self.memo_get(index)?;
                    self.stack.push(value);
                }
                other => {
                    self.pos = opcode_at;
                    return Err(self.error(format!(
                        "unsupported pickle opcode 0x{other:02x}: is it a full model pickle or \
                         another object rather than a state dict? In Python, load it and save \
                         model.state_dict() with torch.save"
                    )));
                }
            }
        }
    }

    /// REDUCE: calls one of the known constructors; other callables give an inert placeholder.
    pub(super) fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(global) = &callable else {
            return Ok(Value::Opaque(describe_callable(&callable).into()));
        };
        let args = match (global, args) {
            (Global::Other(_), _) => return Ok(Value::Opaque(describe_callable(&callable).into())),
            (_, Value::Tuple(args, _)) => args,
            (_, other) => {
                return Err(self.error(format!(
                    "{} called with a {} instead of an argument tuple: corrupt data",
                    describe_callable(&callable),
                    kind(&other)
                )))
            }
        };
        match global {
            Global::OrderedDict => {
                // `OrderedDict()`, or `OrderedDict([(key, value), ...])`.
                let mut items = Vec::new();
                if let Some(Value::List(id)) = args.first() {
                    for pair in &self.lists[*id] {
                        if let Value::Tuple(kv, _) = pair {
                            if let [key, value] = &kv[..] {
                                items.push((key.clone(), value.clone()));
                            }
                        }
                    }
                }
                Ok(self.new_dict(items))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 => {
                let [storage, offset, size, stride, ..] = &args[..] else {
                    return Err(self.error(format!(
                        "_rebuild_tensor with {} arguments instead of at least 4: corrupt data",
                        args.len()
                    )));
                };
                let Value::Storage(storage) = storage else {
                    return Err(self.error(format!(
                        "_rebuild_tensor of a {} rather than a storage: corrupt data",
                        kind(storage)
                    )));
                };
                let offset = self.index(offset, "storage offset")?;
                let size = self.indices(size, "size")?;
                let stride = self.indices(stride, "stride")?;
                if size.len() != stride.len() {
                    return Err(self.error(format!(
                        "a tensor with size {size:?} but stride {stride:?}: corrupt data"
                    )));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: StorageRef::clone(storage),
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter => match args.first() {
                Some(tensor @ Value::Tensor(_)) => Ok(tensor.clone()),
                _ => Err(self.error("_rebuild_parameter without a tensor: corrupt data")),
            },
            // `_rebuild_from_type_v2(func, new_type, args, state)`: a tensor subclass.
            Global::RebuildFromTypeV2 => match &args[..] {
                [func, _, inner_args, ..] => self.call(func.clone(), inner_args.clone()),
                _ => Err(self.error("_rebuild_from_type_v2 with too few arguments: corrupt data")),
            },
            Global::StorageClass(_) => Ok(Value::Opaque(describe_callable(&callable).into())),
            Global::Other(_) => unreachable!("returned above"),
        }
    }

    pub(super) fn index(&self, value: &Value, what: &str) -> Result<usize> {
        match value {
            Value::Int(v) => usize::try_from(*v)
                .map_err(|_| self.error(format!("a negative tensor {what} ({v}): corrupt data"))),
            other => Err(self.error(format!(
                "a tensor {what} that is a {}: corrupt data",
                kind(other)
            ))),
        }
    }

    pub(super) fn indices(&self, value: &Value, what: &str) -> Result<Vec<usize>> {
        match value {
            Value::Tuple(items, _) => items.iter().map(|v| self.index(v, what)).collect(),
            other => Err(self.error(format!(
                "a tensor {what} that is a {}: corrupt data",
                kind(other)
            ))),
        }
    }

    /// BINPERSID: `('storage', storage_class, key, location, numel[, view])`.
    pub(super) fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(fields, _) = &pid else {
            return Err(self.error(format!(
                "a persistent id that is a {}: corrupt data",
                kind(&pid)
            )));
        };
        let (class, key, numel, view) = match &fields[..] {
            [Value::Str(tag), class, key, _location, numel] if &**tag == "storage" => {
                (class, key, numel, None)
            }
            [Value::Str(tag), class, key, _location, numel, view] if &**tag == "storage" => {
                (class, key, numel, Some(view))
            }
            [Value::Str(tag), ..] if &**tag == "module" => {
                return Err(self.error(
                    "the file holds a pickled nn.Module (torch.save(model)) rather than a state \
                     dict: load it in Python and torch.save(model.state_dict(), path)",
                ))
            }
            [Value::Str(tag), ..] => {
                return Err(self.error(format!(
                "persistent id of kind {tag:?} (only storages are read): not a tensor checkpoint"
            )))
            }
            _ => {
                return Err(self.error("a persistent id that is not ('storage', ...): corrupt data"))
            }
        };
        let element = match class {
            Value::Global(Global::StorageClass(element)) => *element,
            other => {
                return Err(self.error(format!(
                    "storage of type {}, which cannot be read as f32 (float, half, bfloat16, \
                     double and integer storages can); convert the tensors to float32 before saving",
                    describe_callable(other)
                )))
            }
        };
        let key = match key {
            Value::Str(key) => key.to_string(),
            Value::Int(key) => key.to_string(),
            other => {
                return Err(self.error(format!(
                    "a storage key that is a {}: corrupt data",
                    kind(other)
                )))
            }
        };
        let numel = self.index(numel, "storage size")?;
        match self.storages.get(&key) {
            Some(&(seen_element, seen_numel)) if (seen_element, seen_numel) != (element, numel) => {
                return Err(self.error(format!(
                    "storage {key} is named as {seen_element:?} x {seen_numel} and as {element:?} x {numel}: corrupt data"
                )))
            }
            _ => {
                self.storages.insert(key.clone(), (element, numel));
            }
        }
        let (offset, view_numel) = match view {
            None | Some(Value::None) => (0, numel),
            // Legacy views: `(view_key, offset, size)` in elements of the root storage.
            Some(Value::Tuple(view, _)) if view.len() == 3 => {
                let offset = self.index(&view[1], "storage view offset")?;
                let size = self.index(&view[2], "storage view size")?;
                if offset.checked_add(size).is_none_or(|end| end > numel) {
                    return Err(self.error(format!(
                        "a view of {size} elements at {offset} of storage {key}, which has {numel}: corrupt data"
                    )));
                }
                (offset, size)
            }
            Some(other) => {
                return Err(self.error(format!(
                    "a storage view that is a {}: corrupt data",
                    kind(other)
                )))
            }
        };
        Ok(Value::Storage(Rc::new(StorageRef {
            key,
            element,
            offset,
            numel: view_numel,
        })))
    }

    pub(super) fn dict_get(&self, id: usize, key: &str) -> Option<&Value> {
        self.dicts[id]
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }

    /// The dict of tensors in `value`: itself, or under one of [`STATE_DICT_KEYS`].
    pub(super) fn find_state_dict(
        &self,
        value: &Value,
        depth: usize,
    ) -> Option<Vec<(String, TensorRef)>> {
        let id = match value {
            Value::Dict(id) => id,
            // `torch.save((state_dict, extra))`, as aiSFX saves `(weights, ds_dict)`: the first
            // item that holds a state dict, only at the top (a tensor's sizes are tuples too).
            Value::Tuple(items, _) if depth == 0 => {
                return items
                    .iter()
                    .find_map(|item| self.find_state_dict(item, depth + 1))
            }
            _ => return None,
        };
        let entries = &self.dicts[*id];
        let is_state_dict = entries.iter().all(|(k, v)| {
            matches!(k, Value::Str(_)) && !matches!(v, Value::Dict(_) | Value::List(_))
        }) && entries.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
        if is_state_dict {
            return Some(
                entries
                    .iter()
                    .filter_map(|(k, v)| match (k, v) {
                        (Value::Str(name), Value::Tensor(t)) => {
                            Some((name.to_string(), TensorRef::clone(t)))
                        }
                        _ => None,
                    })
                    .collect(),
            );
        }
        if depth >= MAX_WRAPPER_DEPTH {
            return None;
        }
        STATE_DICT_KEYS
            .iter()
            .filter_map(|key| self.dict_get(*id, key))
            .find_map(|inner| self.find_state_dict(inner, depth + 1))
    }

    /// What the saved object is, for the error when it holds no state dict.
    pub(super) fn describe_object(&self, value: &Value) -> String {
        match value {
            Value::Dict(id) => {
                let keys: Vec<String> = self.dicts[*id]
                    .iter()
                    .take(12)
                    .map(|(k, v)| format!("{} ({})", key_text(k), kind(v)))
                    .collect();
                format!("a dict with the keys {}", keys.join(", "))
            }
            Value::Opaque(class) => format!(
                "a {class} object (a pickled model or other object, not a state dict; load it in \
                 Python and torch.save(model.state_dict(), path))"
            ),
            other => format!("a {}", kind(other)),
        }
    }

    /// The state dict of `root`, or an error that says what the file holds instead.
    pub(super) fn state_dict(&self, root: &Value, path: &Path) -> Result<Vec<(String, TensorRef)>> {
        let mut tensors = self.find_state_dict(root, 0).ok_or_else(|| {
            anyhow!(
                "{} holds no state dict (a dict of tensors, at the top, in a tuple at the top, or under {}): it holds {}",
                path.display(),
                STATE_DICT_KEYS.map(|k| format!("'{k}'")).join(", "),
                self.describe_object(root)
            )
        })?;
        // nn.DataParallel prefixes every name with `module.`.
        if tensors.iter().all(|(name, _)| name.starts_with("module.")) {
            for (name, _) in &mut tensors {
                name.drain(.."module.".len());
            }
        }
        Ok(tensors)
    }
}

/// A LONG1/LONG4 payload: little-endian two's complement.
pub(super) fn long_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut full = if negative { [0xffu8; 8] } else { [0u8; 8] };
        full[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(full))
    } else {
        Value::BigInt(bytes.into())
    }
}

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(..) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "class or function",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "tensor",
        Value::Opaque(_) => "object",
    }
}

pub(super) fn key_text(key: &Value) -> String {
    match key {
        Value::Str(s) => format!("'{s}'"),
        Value::Int(i) => i.to_string(),
        other => kind(other).to_string(),
    }
}

pub(super) fn describe_callable(value: &Value) -> String {
    match value {
        Value::Global(Global::Other(name)) => name.to_string(),
        Value::Global(Global::StorageClass(element)) => format!("{element:?} storage"),
        Value::Global(global) => format!("{global:?}"),
        Value::Opaque(name) => name.to_string(),
        other => kind(other).to_string(),
    }
}
