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

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

mod pickle;
#[cfg(test)]
mod tests;

use crate::weights::f16_to_f32;
pub use crate::weights::Tensor;
use pickle::{kind, TensorRef, Unpickler, Value};

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
