//! Reading pretrained checkpoints as named f32 tensors: safetensors and PyTorch's `torch.save`.
//!
//! [`read_checkpoint`] recognises the format from the file's first bytes, whatever its
//! extension, and returns the model's state dict: `name -> Tensor { shape, data }`, row-major,
//! every element type converted to f32 (integer tensors too, e.g. BatchNorm's
//! `num_batches_tracked`).
//!
//! # Formats
//!
//! - safetensors (<https://huggingface.co/docs/safetensors>): a little-endian u64 header length,
//!   a JSON header, then the tensors' bytes.
//! - PyTorch zip (`torch.save` since torch 1.6, see `torch/serialization.py`, `_save`): a zip
//!   archive (entries stored, not compressed) whose single top folder `<prefix>/` holds
//!   `data.pkl` (the saved object, pickle protocol 2), `data/<key>` (each storage's raw bytes),
//!   `byteorder` (`little` or `big`; absent in older files, which are little-endian) and
//!   `version`.
//! - PyTorch legacy (`torch.save` before 1.6, or with `_use_new_zipfile_serialization=False`;
//!   `_legacy_save`): five pickles in a row (the magic number `0x1950a86a20f9469cfc6c`, the
//!   protocol version 1001, a dict of system info, the saved object, the list of storage keys),
//!   then for each key an int64 element count and the storage's bytes, both little-endian
//!   whatever the machine (`THPStorage_writeFileRaw` in `torch/csrc/serialization.cpp`).
//!
//! In both PyTorch formats a tensor is pickled as a call to `torch._utils._rebuild_tensor_v2(
//! storage, storage_offset, size, stride, requires_grad, backward_hooks)`, where `storage` is a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)` (legacy: plus a view
//! `(view_key, offset, size)` or `None`). A tensor is any strided view of its storage: several
//! tensors may share one storage at different offsets, and a transposed tensor is saved with
//! its transposed strides; both are copied out element by element here.
//!
//! # Safety
//!
//! Python's `pickle.load` runs whatever functions a file names. The small pickle machine here
//! runs none: it knows the opcodes torch's state dicts use (protocols 2 to 5, no text opcodes)
//! and builds values itself. Of the globals a file may name, only these build anything:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor{,_v2}`,
//! `torch._utils._rebuild_parameter{,_with_state}`, `torch._tensor._rebuild_from_type_v2` and
//! the storage types `torch[.cuda].{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}
//! Storage`. Any other global becomes an inert placeholder: a checkpoint that also holds, say,
//! a sampler's NumPy random state still reads, and a pickled model (`torch.save(model)`) ends
//! in an error that names its class and the fix (save `model.state_dict()`). Every length and
//! index read from the file is checked against the file, so a truncated or corrupt file gives an
//! error, never a panic or a huge allocation.
//!
//! # Where the state dict is
//!
//! Checkpoints are saved as the state dict itself or wrapped, as PANNs' are
//! (`{'model': state_dict, 'iteration': ..., 'sampler': ...}`): the dict of tensors is found at
//! the top or under `model`, `state_dict`, `model_state_dict`, `module` or `net`, a few levels
//! deep, or as an item of a tuple saved at the top (aiSFX's `torch.save((weights, ds_dict))`). A `module.` prefix on every name (a model saved inside `nn.DataParallel`) is removed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::weights::f16_to_f32;
pub use crate::weights::Tensor;

/// Tensors by name, sorted.
pub type StateDict = BTreeMap<String, Tensor>;

/// Keys under which checkpoints wrap their state dict, in order of preference.
const STATE_DICT_KEYS: [&str; 5] = ["model", "state_dict", "model_state_dict", "module", "net"];
/// How deep wrappers are searched for the state dict.
const MAX_WRAPPER_DEPTH: usize = 4;
/// The deepest tuple nesting accepted (torch's tuples are sizes and strides: depth 2).
const MAX_TUPLE_DEPTH: usize = 64;
/// `torch.serialization.MAGIC_NUMBER` as pickle writes it (LONG1, little-endian two's complement).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// `torch.serialization.PROTOCOL_VERSION`.
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// The checkpoint formats, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TorchZip,
    TorchLegacy,
    Safetensors,
}

/// The format of a file that starts with `head` (at least 16 bytes when the file has them).
fn sniff(head: &[u8], path: &Path) -> Result<Format> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Format::TorchZip)
    } else if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        Ok(Format::TorchLegacy)
    } else if head.len() >= 9 && head[8] == b'{' {
        Ok(Format::Safetensors)
    } else {
        bail!(
            "{} is neither a safetensors file nor a PyTorch checkpoint written by torch.save \
             (zip or legacy pickle format); checkpoints older than torch 0.4 (tar) must be loaded \
             and saved again with a recent torch",
            path.display()
        )
    }
}

/// Reads the state dict of a safetensors file or a PyTorch checkpoint (zip or legacy format).
pub fn read_checkpoint(path: &Path) -> Result<StateDict> {
    let mut head = [0u8; 16];
    let head_len = {
        let mut file =
            File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        read_up_to(&mut file, &mut head)
            .with_context(|| format!("cannot read {}", path.display()))?
    };
    match sniff(&head[..head_len], path)? {
        Format::TorchZip => read_torch_zip(path),
        Format::TorchLegacy => read_torch_legacy(path),
        Format::Safetensors => read_safetensors(path),
    }
}

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    safetensors_state_dict(&bytes, path)
}

fn safetensors_state_dict(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let tensors = SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut state = StateDict::new();
    for (name, view) in tensors.tensors() {
        let element = match view.dtype() {
            Dtype::F32 => ElementType::F32,
            Dtype::F16 => ElementType::F16,
            Dtype::BF16 => ElementType::BF16,
            Dtype::F64 => ElementType::F64,
            Dtype::I64 => ElementType::I64,
            Dtype::I32 => ElementType::I32,
            Dtype::I16 => ElementType::I16,
            Dtype::I8 => ElementType::I8,
            Dtype::U8 => ElementType::U8,
            Dtype::BOOL => ElementType::Bool,
            other => bail!(
                "{}: tensor {name} has dtype {other:?}, which cannot be read as f32; convert it \
                 to float32 when saving",
                path.display()
            ),
        };
        state.insert(
            name,
            Tensor {
                shape: view.shape().to_vec(),
                data: element.decode(view.data(), true),
            },
        );
    }
    Ok(state)
}

fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The element types of torch storages and safetensors tensors that convert to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl ElementType {
    /// The element type of a torch storage class (`FloatStorage`, ...).
    fn from_storage_class(name: &str) -> Option<ElementType> {
        Some(match name {
            "FloatStorage" => ElementType::F32,
            "HalfStorage" => ElementType::F16,
            "BFloat16Storage" => ElementType::BF16,
            "DoubleStorage" => ElementType::F64,
            "LongStorage" => ElementType::I64,
            "IntStorage" => ElementType::I32,
            "ShortStorage" => ElementType::I16,
            "CharStorage" => ElementType::I8,
            "ByteStorage" => ElementType::U8,
            "BoolStorage" => ElementType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementType::F64 | ElementType::I64 => 8,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F16 | ElementType::BF16 | ElementType::I16 => 2,
            ElementType::I8 | ElementType::U8 | ElementType::Bool => 1,
        }
    }

    /// Converts packed elements to f32 (a trailing partial element is ignored).
    pub fn decode(self, bytes: &[u8], little_endian: bool) -> Vec<f32> {
        fn chunks<const N: usize>(
            bytes: &[u8],
            little_endian: bool,
        ) -> impl Iterator<Item = [u8; N]> + '_ {
            bytes.chunks_exact(N).map(move |chunk| {
                let mut array: [u8; N] = chunk.try_into().expect("chunks_exact gives N bytes");
                if !little_endian {
                    array.reverse();
                }
                array
            })
        }
        match self {
            ElementType::F32 => chunks::<4>(bytes, little_endian)
                .map(f32::from_le_bytes)
                .collect(),
            ElementType::F16 => chunks::<2>(bytes, little_endian)
                .map(|b| f16_to_f32(u16::from_le_bytes(b)))
                .collect(),
            // bfloat16 is the high half of an f32.
            ElementType::BF16 => chunks::<2>(bytes, little_endian)
                .map(|b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16))
                .collect(),
            ElementType::F64 => chunks::<8>(bytes, little_endian)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
            ElementType::I64 => chunks::<8>(bytes, little_endian)
                .map(|b| i64::from_le_bytes(b) as f32)
                .collect(),
            ElementType::I32 => chunks::<4>(bytes, little_endian)
                .map(|b| i32::from_le_bytes(b) as f32)
                .collect(),
            ElementType::I16 => chunks::<2>(bytes, little_endian)
                .map(|b| i16::from_le_bytes(b) as f32)
                .collect(),
            ElementType::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
            ElementType::U8 | ElementType::Bool => bytes.iter().map(|&b| b as f32).collect(),
        }
    }
}

/// A storage as a persistent id names it; `offset` and `numel` select a view of the stored
/// storage `key` (legacy files only; otherwise `offset` is 0 and `numel` the whole storage).
#[derive(Debug, Clone, PartialEq)]
struct StorageRef {
    key: String,
    element: ElementType,
    offset: usize,
    numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The globals the pickle machine builds values with; anything else is `Other`.
#[derive(Debug, Clone, PartialEq)]
enum Global {
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
enum Value {
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
fn tuple_depth(value: &Value) -> usize {
    match value {
        Value::Tuple(_, depth) => *depth,
        _ => 0,
    }
}

/// What a pickle machine remembers across the pickles of one file.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// The file and part, for errors (`x.pth`, `x.pth:archive/data.pkl`).
    source: String,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    lists: Vec<Vec<Value>>,
    dicts: Vec<Vec<(Value, Value)>>,
    /// Storages named by persistent ids: key -> (element type, element count).
    storages: HashMap<String, (ElementType, usize)>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], source: String) -> Unpickler<'a> {
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

    fn error(&self, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{} (byte {}): {message}", self.source, self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
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

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn length(&mut self, n: u64) -> Result<usize> {
        usize::try_from(n).map_err(|_| self.error("a length beyond the address space"))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("a GLOBAL name without its newline: truncated or corrupt"))?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn text(&mut self, n: usize) -> Result<String> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("a string that is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("the pickle pops an empty stack: corrupt data"));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("the pickle reads an empty stack: corrupt data"));
        }
        Ok(self.stack.last_mut().expect("checked above"))
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.error("the pickle closes a MARK it never opened: corrupt data"))?;
        Ok(self.stack.split_off(mark))
    }

    fn push_tuple(&mut self, items: Vec<Value>) -> Result<()> {
        let depth = 1 + items.iter().map(tuple_depth).max().unwrap_or(0);
        if depth > MAX_TUPLE_DEPTH {
            return Err(self.error(format!(
                "tuples nested deeper than {MAX_TUPLE_DEPTH}: not a state dict"
            )));
        }
        self.stack.push(Value::Tuple(items.into(), depth));
        Ok(())
    }

    fn new_dict(&mut self, items: Vec<(Value, Value)>) -> Value {
        self.dicts.push(items);
        Value::Dict(self.dicts.len() - 1)
    }

    fn memo_get(&self, index: u32) -> Result<Value> {
        self.memo.get(&index).cloned().ok_or_else(|| {
            self.error(format!(
                "memo entry {index} is read before it is written: corrupt data"
            ))
        })
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    /// Adds key-value pairs to the dict on top of the stack (an object of a class the reader
    /// does not build takes them and drops them).
    fn set_items(&mut self, pairs: Vec<Value>) -> Result<()> {
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

    fn append_items(&mut self, items: Vec<Value>) -> Result<()> {
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

    /// Runs one pickle up to its STOP and returns the value it builds.
    fn load(&mut self) -> Result<Value> {
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
    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
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

    fn index(&self, value: &Value, what: &str) -> Result<usize> {
        match value {
            Value::Int(v) => usize::try_from(*v)
                .map_err(|_| self.error(format!("a negative tensor {what} ({v}): corrupt data"))),
            other => Err(self.error(format!(
                "a tensor {what} that is a {}: corrupt data",
                kind(other)
            ))),
        }
    }

    fn indices(&self, value: &Value, what: &str) -> Result<Vec<usize>> {
        match value {
            Value::Tuple(items, _) => items.iter().map(|v| self.index(v, what)).collect(),
            other => Err(self.error(format!(
                "a tensor {what} that is a {}: corrupt data",
                kind(other)
            ))),
        }
    }

    /// BINPERSID: `('storage', storage_class, key, location, numel[, view])`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value> {
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

    fn dict_get(&self, id: usize, key: &str) -> Option<&Value> {
        self.dicts[id]
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }

    /// The dict of tensors in `value`: itself, or under one of [`STATE_DICT_KEYS`].
    fn find_state_dict(&self, value: &Value, depth: usize) -> Option<Vec<(String, TensorRef)>> {
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
    fn describe_object(&self, value: &Value) -> String {
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
    fn state_dict(&self, root: &Value, path: &Path) -> Result<Vec<(String, TensorRef)>> {
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
fn long_value(bytes: &[u8]) -> Value {
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

fn kind(value: &Value) -> &'static str {
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

fn key_text(key: &Value) -> String {
    match key {
        Value::Str(s) => format!("'{s}'"),
        Value::Int(i) => i.to_string(),
        other => kind(other).to_string(),
    }
}

fn describe_callable(value: &Value) -> String {
    match value {
        Value::Global(Global::Other(name)) => name.to_string(),
        Value::Global(Global::StorageClass(element)) => format!("{element:?} storage"),
        Value::Global(global) => format!("{global:?}"),
        Value::Opaque(name) => name.to_string(),
        other => kind(other).to_string(),
    }
}

/// Copies a strided view out of its storage, in row-major order.
fn gather(storage: &[f32], tensor: &TensorRef) -> std::result::Result<Vec<f32>, String> {
    let numel = tensor
        .size
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(s))
        .ok_or("its size overflows: the file is corrupt")?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // An axis of size 1 never moves, whatever its stride (torch saves any value there).
    let stride: Vec<usize> = tensor
        .size
        .iter()
        .zip(&tensor.stride)
        .map(|(&s, &st)| if s == 1 { 0 } else { st })
        .collect();
    // The last element it reads, which must lie inside the storage.
    let last = tensor
        .size
        .iter()
        .zip(&stride)
        .try_fold(tensor.offset, |end, (&s, &st)| {
            (s - 1).checked_mul(st).and_then(|d| end.checked_add(d))
        })
        .ok_or("its strides overflow: the file is corrupt")?;
    if last >= storage.len() {
        return Err(format!(
            "it reads element {last} of a storage of {} (offset {}, size {:?}, stride {:?}): \
             the file is corrupt",
            storage.len(),
            tensor.offset,
            tensor.size,
            tensor.stride
        ));
    }
    if numel > storage.len() {
        return Err(format!(
            "it has {numel} elements but its storage only {} (an expanded view?); save \
             tensor.contiguous() instead",
            storage.len()
        ));
    }
    let mut contiguous = true;
    let mut expected = 1;
    for (&s, &st) in tensor.size.iter().zip(&stride).rev() {
        if s != 1 && st != expected {
            contiguous = false;
        }
        expected *= s;
    }
    if contiguous {
        return Ok(storage[tensor.offset..tensor.offset + numel].to_vec());
    }
    let rank = tensor.size.len();
    let mut data = Vec::with_capacity(numel);
    let mut index = vec![0usize; rank];
    let mut position = tensor.offset;
    for _ in 0..numel {
        data.push(storage[position]);
        // Odometer: bump the last axis, carry into the earlier ones.
        for axis in (0..rank).rev() {
            index[axis] += 1;
            position += stride[axis];
            if index[axis] < tensor.size[axis] {
                break;
            }
            position -= stride[axis] * tensor.size[axis];
            index[axis] = 0;
        }
    }
    Ok(data)
}

/// Copies every tensor out of its storage; `load` returns the bytes of a storage (its key).
fn materialise(
    tensors: Vec<(String, TensorRef)>,
    storages: &HashMap<String, (ElementType, usize)>,
    little_endian: bool,
    path: &Path,
    mut load: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<StateDict> {
    let mut decoded: HashMap<String, Vec<f32>> = HashMap::new();
    let mut state = StateDict::new();
    for (name, tensor) in tensors {
        let key = &tensor.storage.key;
        if !decoded.contains_key(key) {
            let &(element, numel) = storages.get(key).expect("every storage ref was registered");
            let needed = numel.checked_mul(element.size()).ok_or_else(|| {
                anyhow!(
                    "{}: storage {key} of tensor {name} is too large: corrupt file",
                    path.display()
                )
            })?;
            let bytes = load(key).with_context(|| format!("{}: tensor {name}", path.display()))?;
            if bytes.len() < needed {
                bail!(
                    "{}: storage {key} of tensor {name} has {} bytes but needs {needed} \
                     ({numel} x {element:?}): the file is truncated or corrupt",
                    path.display(),
                    bytes.len()
                );
            }
            decoded.insert(key.clone(), element.decode(&bytes[..needed], little_endian));
        }
        let storage = &decoded[key];
        let view = &storage[tensor.storage.offset..tensor.storage.offset + tensor.storage.numel];
        let data = gather(view, &tensor).map_err(|problem| {
            anyhow!(
                "{}: tensor {name} does not fit its storage {key}: {problem}",
                path.display()
            )
        })?;
        state.insert(
            name,
            Tensor {
                shape: tensor.size.clone(),
                data,
            },
        );
    }
    Ok(state)
}

/// Reads a zip entry whole, refusing more than `limit` bytes.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>> {
    let entry = archive
        .by_name(name)
        .with_context(|| format!("no entry {name} in the archive"))?;
    let mut bytes = Vec::new();
    entry
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| {
            format!("cannot read entry {name}: the archive is truncated or corrupt")
        })?;
    if bytes.len() as u64 > limit {
        bail!("entry {name} is larger than the archive itself: corrupt archive");
    }
    Ok(bytes)
}

/// Reads a checkpoint in torch's zip format.
pub fn read_torch_zip(path: &Path) -> Result<StateDict> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    zip_state_dict(file, file_len, path)
}

/// Reads a torch zip archive of `file_len` bytes (`path` names it in errors).
fn zip_state_dict<R: Read + Seek>(reader: R, file_len: u64, path: &Path) -> Result<StateDict> {
    let mut archive = zip::ZipArchive::new(reader).with_context(|| {
        format!(
            "{} is not a readable zip archive (truncated or corrupt?)",
            path.display()
        )
    })?;
    let names: Vec<String> = archive.file_names().map(String::from).collect();
    let pickle_name = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .min()
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "{} is a zip archive without <folder>/data.pkl: not a PyTorch checkpoint",
                path.display()
            )
        })?;
    let prefix = &pickle_name[..pickle_name.len() - "data.pkl".len()];
    if names
        .iter()
        .any(|n| n == &format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/")))
    {
        bail!(
            "{} is a TorchScript archive (torch.jit.save), not a state dict: load it in Python \
             and torch.save(model.state_dict(), path)",
            path.display()
        );
    }
    let little_endian = match read_entry(&mut archive, &format!("{prefix}byteorder"), 16) {
        Ok(bytes) => match String::from_utf8_lossy(&bytes).trim() {
            "little" => true,
            "big" => false,
            other => bail!(
                "{}: byteorder {other:?} is neither little nor big",
                path.display()
            ),
        },
        // Files written before torch recorded the byte order are little-endian.
        Err(_) => true,
    };
    let pickle = read_entry(&mut archive, &pickle_name, file_len)
        .with_context(|| format!("{}", path.display()))?;
    let mut unpickler = Unpickler::new(&pickle, format!("{}:{pickle_name}", path.display()));
    let root = unpickler.load()?;
    let tensors = unpickler.state_dict(&root, path)?;
    materialise(tensors, &unpickler.storages, little_endian, path, |key| {
        read_entry(&mut archive, &format!("{prefix}data/{key}"), file_len)
            .with_context(|| format!("storage {key}"))
    })
}

/// Reads a checkpoint in torch's legacy (pre-1.6) format.
pub fn read_torch_legacy(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    legacy_state_dict(&bytes, path)
}

/// Reads the bytes of a legacy torch checkpoint (`path` names it in errors).
fn legacy_state_dict(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let mut unpickler = Unpickler::new(bytes, path.display().to_string());
    match unpickler.load()? {
        Value::BigInt(magic) if *magic == LEGACY_MAGIC => {}
        _ => bail!(
            "{} is a pickle but not a torch.save checkpoint (no torch magic number); only \
             checkpoints written by torch.save are read",
            path.display()
        ),
    }
    match unpickler.load()? {
        Value::Int(LEGACY_PROTOCOL_VERSION) => {}
        Value::Int(other) => bail!(
            "{}: torch legacy protocol version {other}, expected {LEGACY_PROTOCOL_VERSION}",
            path.display()
        ),
        other => bail!(
            "{}: the torch legacy protocol version is a {}: corrupt file",
            path.display(),
            kind(&other)
        ),
    }
    // System info (byte order, C type sizes): torch writes legacy storages little-endian on
    // every machine, so nothing in it matters here.
    unpickler.load()?;
    let little_endian = true;
    let root = unpickler.load()?;
    let keys = match unpickler.load()? {
        Value::List(id) => unpickler.lists[id].clone(),
        other => bail!(
            "{}: the list of storage keys is a {}: corrupt file",
            path.display(),
            kind(&other)
        ),
    };
    // The storages follow in the order of that list: an int64 count, then the bytes.
    let mut ranges: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    let mut pos = unpickler.pos;
    for key in keys {
        let key = match key {
            Value::Str(key) => key.to_string(),
            Value::Int(key) => key.to_string(),
            other => bail!(
                "{}: a storage key that is a {}: corrupt file",
                path.display(),
                kind(&other)
            ),
        };
        let &(element, numel) = unpickler.storages.get(&key).ok_or_else(|| {
            anyhow!(
                "{}: storage {key} is stored but no tensor names it: corrupt file",
                path.display()
            )
        })?;
        let count_bytes: [u8; 8] = bytes
            .get(pos..pos + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                anyhow!(
                    "{}: the file ends before storage {key}: truncated",
                    path.display()
                )
            })?;
        let count = if little_endian {
            u64::from_le_bytes(count_bytes)
        } else {
            u64::from_be_bytes(count_bytes)
        };
        if count != numel as u64 {
            bail!(
                "{}: storage {key} is stored with {count} elements but named with {numel}: corrupt file",
                path.display()
            );
        }
        let start = pos + 8;
        let end = numel
            .checked_mul(element.size())
            .and_then(|n| start.checked_add(n))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                anyhow!(
                    "{}: the file ends inside storage {key} ({numel} x {element:?}): truncated",
                    path.display()
                )
            })?;
        ranges.insert(key, start..end);
        pos = end;
    }
    let tensors = unpickler.state_dict(&root, path)?;
    materialise(tensors, &unpickler.storages, little_endian, path, |key| {
        let range = ranges.get(key).ok_or_else(|| {
            anyhow!("storage {key} is missing from the file's storage section: corrupt file")
        })?;
        Ok(bytes[range.clone()].to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use crate::testing::{fresh_dir, make_checkpoints};

    /// The checkpoints of tests/python/helpers/make_checkpoints.py, written once per test run;
    /// `None` (with a message) when there is no Python.
    fn python_checkpoints() -> Option<&'static Path> {
        static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
        DIR.get_or_init(|| make_checkpoints(&[], &[])).as_deref()
    }

    fn expected(dir: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
    }

    #[test]
    fn reads_torch_checkpoints_in_both_formats() {
        let Some(dir) = python_checkpoints() else {
            return;
        };
        let expected = expected(dir);
        let files = expected["tensors"].as_object().unwrap();
        assert_eq!(files.len(), 5);
        for (file, tensors) in files {
            let state =
                read_checkpoint(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            let tensors = tensors.as_object().unwrap();
            assert_eq!(
                state.keys().collect::<Vec<_>>(),
                tensors.keys().collect::<Vec<_>>(),
                "{file}"
            );
            for (name, want) in tensors {
                let got = &state[name];
                let shape: Vec<usize> = want["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                let data: Vec<f32> = want["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(got.shape, shape, "{file}: {name}");
                assert_eq!(got.data, data, "{file}: {name}");
            }
        }
        // The format-specific entry points.
        assert_eq!(
            read_torch_legacy(&dir.join("legacy.pth")).unwrap(),
            read_checkpoint(&dir.join("legacy.pth")).unwrap()
        );
        assert!(read_torch_zip(&dir.join("legacy.pth")).is_err());
        assert!(read_torch_legacy(&dir.join("panns.pth")).is_err());
    }

    #[test]
    fn broken_checkpoints_give_errors_that_name_the_file_and_the_fix() {
        let Some(dir) = python_checkpoints() else {
            return;
        };
        let expected = expected(dir);
        let files = expected["errors"].as_object().unwrap();
        assert!(files.len() >= 6);
        for (file, needles) in files {
            let error = match read_checkpoint(&dir.join(file)) {
                Ok(state) => panic!("{file} read as {:?}", state.keys().collect::<Vec<_>>()),
                Err(e) => format!("{e:#}"),
            };
            assert!(error.contains(file.as_str()), "{file}: {error}");
            for needle in needles.as_array().unwrap() {
                let needle = needle.as_str().unwrap();
                assert!(error.contains(needle), "{file}: {error:?} lacks {needle:?}");
            }
        }
    }

    /// [`read_checkpoint`] on bytes in memory.
    fn read_bytes(bytes: &[u8]) -> Result<StateDict> {
        let path = Path::new("damaged.pth");
        match sniff(&bytes[..bytes.len().min(16)], path)? {
            Format::TorchZip => {
                zip_state_dict(std::io::Cursor::new(bytes), bytes.len() as u64, path)
            }
            Format::TorchLegacy => legacy_state_dict(bytes, path),
            Format::Safetensors => safetensors_state_dict(bytes, path),
        }
    }

    #[test]
    fn truncated_and_corrupted_checkpoints_give_errors_not_panics() {
        let Some(dir) = python_checkpoints() else {
            return;
        };
        for file in [
            "state_dict.pth",
            "panns.pth",
            "legacy.pth",
            "big_endian.pth",
        ] {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            assert!(read_bytes(&bytes).is_ok(), "{file}");
            // Every proper prefix is an error.
            for cut in 0..bytes.len() {
                assert!(
                    read_bytes(&bytes[..cut]).is_err(),
                    "{file} cut at {cut} read"
                );
            }
            // Any byte changed gives a result or an error, never a panic (a zip archive checks
            // its entries' CRC; the legacy file is bare pickles and storages).
            for position in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut changed = bytes.clone();
                    changed[position] ^= flip;
                    let _ = read_bytes(&changed);
                }
            }
        }
        // The pickle machine itself, on changed copies of a zip checkpoint's data.pkl.
        let mut archive =
            zip::ZipArchive::new(File::open(dir.join("state_dict.pth")).unwrap()).unwrap();
        let pickle = read_entry(&mut archive, "archive/data.pkl", 1 << 20).unwrap();
        let mut still_read = 0;
        for position in 0..pickle.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut changed = pickle.clone();
                changed[position] ^= flip;
                let mut unpickler = Unpickler::new(&changed, "data.pkl".into());
                if let Ok(root) = unpickler.load() {
                    if unpickler.state_dict(&root, Path::new("x")).is_ok() {
                        still_read += 1;
                    }
                }
            }
        }
        // Flips inside values (numbers, names) still read: the loop did run whole pickles.
        assert!(still_read > 0);
    }

    #[test]
    fn hand_written_pickles_cover_the_memo_and_the_limits() {
        // {'a': t, 'b': t}: one tensor memoised and fetched again; LONG1 sizes; STACK_GLOBAL
        // and SHORT_BINUNICODE (protocol 4 opcodes).
        let mut p = vec![0x80, 4, b'}', b'(', 0x8c, 1, b'a'];
        p.extend([0x8c, 12]);
        p.extend(b"torch._utils");
        p.extend([0x8c, 18]);
        p.extend(b"_rebuild_tensor_v2");
        p.push(0x93);
        p.extend(b"(("); // the argument tuple's mark, then the persistent id's
        p.extend([0x8c, 7]);
        p.extend(b"storage");
        p.extend([0x8c, 5]);
        p.extend(b"torch");
        p.extend([0x8c, 12]);
        p.extend(b"FloatStorage");
        p.push(0x93);
        p.extend([0x8c, 1, b'k', 0x8c, 3]);
        p.extend(b"cpu");
        p.extend([b'K', 6, b't', b'Q']); // ('storage', FloatStorage, 'k', 'cpu', 6)
        p.extend([0x8a, 1, 3]); // offset 3 (LONG1)
        p.extend([b'K', 3, 0x85]); // size (3,)
        p.extend([b'K', 1, 0x85]); // stride (1,)
        p.extend([0x89, b'}', b't', b'R', 0x94]); // memo 0
        p.extend([0x8c, 1, b'b', b'h', 0, b'u', b'.']);
        let mut unpickler = Unpickler::new(&p, "hand.pkl".into());
        let root = unpickler.load().unwrap();
        let tensors = unpickler.state_dict(&root, Path::new("hand.pkl")).unwrap();
        assert_eq!(tensors.len(), 2);
        assert_eq!(tensors[0].1, tensors[1].1);
        assert_eq!(tensors[1].1.offset, 3);
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let state = materialise(
            tensors,
            &unpickler.storages,
            true,
            Path::new("hand.pkl"),
            |_| Ok(storage.clone()),
        )
        .unwrap();
        assert_eq!(state["b"].data, [3.0, 4.0, 5.0]);

        // A memo fetch before its store, an unclosed mark, a deep tuple: errors.
        for (bytes, needle) in [
            (&b"\x80\x02h\x05."[..], "memo entry 5"),
            (&b"\x80\x02t."[..], "MARK it never opened"),
            (&b"\x80\x02X\xff\xff\xff\x7fabc"[..], "truncated"),
            (&b"\x80\x02N0."[..], "empty stack"),
        ] {
            let error = format!(
                "{:#}",
                Unpickler::new(bytes, "x.pkl".into()).load().unwrap_err()
            );
            assert!(error.contains(needle) && error.contains("x.pkl"), "{error}");
        }
        // Tuples sharing halves through the memo, 80 levels: each twice the one before, so
        // 2^80 leaves if anything walked them.
        let mut shared = vec![0x80, 2, b'N', 0x85, b'q', 0];
        for level in 1..80u8 {
            shared.extend([b'h', level - 1, b'h', level - 1, 0x86, b'q', level]);
        }
        shared.push(b'.');
        let Err(error) = Unpickler::new(&shared, "x.pkl".into()).load() else {
            panic!("80 levels of tuples read");
        };
        assert!(format!("{error:#}").contains("nested deeper"), "{error:#}");
        let mut deep = vec![0x80, 2, b'N'];
        deep.extend(std::iter::repeat_n(0x85u8, 1000));
        deep.push(b'.');
        let error = format!(
            "{:#}",
            Unpickler::new(&deep, "x.pkl".into()).load().unwrap_err()
        );
        assert!(error.contains("nested deeper"), "{error}");
    }

    #[test]
    fn strided_views_are_copied_in_row_major_order() {
        let storage: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let view = |offset, size: &[usize], stride: &[usize]| TensorRef {
            storage: StorageRef {
                key: "0".into(),
                element: ElementType::F32,
                offset: 0,
                numel: storage.len(),
            },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        };
        // A [2, 3, 4] tensor permuted to [4, 2, 3] (strides 1, 12, 4), from offset 0.
        let permuted = gather(&storage, &view(0, &[4, 2, 3], &[1, 12, 4])).unwrap();
        let mut expected = Vec::new();
        for k in 0..4 {
            for i in 0..2 {
                for j in 0..3 {
                    expected.push((i * 12 + j * 4 + k) as f32);
                }
            }
        }
        assert_eq!(permuted, expected);
        // Size-1 axes may carry any stride.
        assert_eq!(
            gather(&storage, &view(5, &[1, 2], &[usize::MAX, 1])).unwrap(),
            [5.0, 6.0]
        );
        assert!(gather(&storage, &view(20, &[2, 3], &[3, 1]))
            .unwrap_err()
            .contains("reads element 25"));
        assert!(gather(&storage, &view(0, &[5, 6], &[0, 1]))
            .unwrap_err()
            .contains("expanded"));
        assert!(gather(&storage, &view(0, &[usize::MAX, 3], &[1, 1])).is_err());
    }

    #[test]
    fn reads_safetensors_of_every_float_and_integer_type() {
        use safetensors::tensor::TensorView;
        let dir = fresh_dir("safetensors");
        let f32s: Vec<u8> = [1.0f32, -2.0, 0.5, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [0x3c00u16, 0xc000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = [0x3f80u16, 0xc040]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [0.25f64, -1e10]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let i64s: Vec<u8> = [7i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            (
                "a.weight",
                TensorView::new(Dtype::F32, vec![2, 2], &f32s).unwrap(),
            ),
            (
                "b.half",
                TensorView::new(Dtype::F16, vec![2], &f16s).unwrap(),
            ),
            (
                "c.bf16",
                TensorView::new(Dtype::BF16, vec![2, 1], &bf16s).unwrap(),
            ),
            (
                "d.double",
                TensorView::new(Dtype::F64, vec![2], &f64s).unwrap(),
            ),
            (
                "e.num_batches_tracked",
                TensorView::new(Dtype::I64, vec![2], &i64s).unwrap(),
            ),
        ];
        let path = dir.join("model.safetensors");
        let bytes = safetensors::serialize(views, None).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let state = read_checkpoint(&path).unwrap();
        assert_eq!(state["a.weight"].shape, [2, 2]);
        assert_eq!(state["a.weight"].data, [1.0, -2.0, 0.5, 4.0]);
        assert_eq!(state["b.half"].data, [1.0, -2.0]);
        assert_eq!(state["c.bf16"].shape, [2, 1]);
        assert_eq!(state["c.bf16"].data, [1.0, -3.0]);
        assert_eq!(state["d.double"].data, [0.25, -1e10]);
        assert_eq!(state["e.num_batches_tracked"].data, [7.0, -3.0]);
        assert_eq!(read_safetensors(&path).unwrap(), state);

        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let error = format!("{:#}", read_checkpoint(&path).unwrap_err());
        assert!(
            error.contains("model.safetensors is not a valid safetensors file"),
            "{error}"
        );
        let u32s = [0u8; 8];
        let views = vec![(
            "counts",
            TensorView::new(Dtype::U32, vec![2], &u32s).unwrap(),
        )];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let error = format!("{:#}", read_checkpoint(&path).unwrap_err());
        assert!(error.contains("tensor counts has dtype U32"), "{error}");
        std::fs::write(&path, b"hello, world").unwrap();
        let error = format!("{:#}", read_checkpoint(&path).unwrap_err());
        assert!(
            error.contains("neither a safetensors file nor a PyTorch checkpoint"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
