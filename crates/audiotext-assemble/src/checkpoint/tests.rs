//! Reading checkpoints written by PyTorch itself (when Python and torch are there) and by
//! hand: every format, element type and wrapper, and corrupt or hostile files.

use super::pickle::StorageRef;
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
        let state = read_checkpoint(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
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
        Format::TorchZip => zip_state_dict(std::io::Cursor::new(bytes), bytes.len() as u64, path),
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
