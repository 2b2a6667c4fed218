//! A GGUF file opened for inference: the header (metadata and tensor table) parsed and checked, the
//! tensor data read on demand, tensor by tensor, into memory of our own.
//!
//! The header parser is ours rather than candle's `Content::read` (whose types it fills, so the tokenizer
//! reads the same metadata) because a model file must never take the process down: candle's divides by
//! a zero `general.alignment` (huggingface/candle#3876) and its errors name neither the key nor the
//! tensor. Here every count, length, dimension and offset is checked against the file's size, with
//! overflow-checked arithmetic, before anything is allocated, and every error names the file and the key
//! or tensor.
//!
//! The weights are read with ordinary reads, not memory-mapped: a mapped file truncated while the model
//! loads kills the process with SIGBUS, and one overwritten after loading silently changes the weights.
//! Each tensor gets its own buffer rather than a slice of one buffer holding the whole file, so that peak
//! memory stays at what the loaded model holds plus one tensor: the model repacks or converts most
//! matrices at load, and each original is freed as soon as its copy exists, which a slice of a shared
//! buffer could not be. The price is the embedding table, looked up a row at a time, which now stays in
//! memory whole where the map paged in only the rows used.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

use super::error::{EngineError, Result};

/// Where tensor data starts when `general.alignment` is absent (the GGUF default).
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// GGML tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Caps on what the header may declare, far above any real model (a few hundred keys, a few thousand
/// tensors, under a million array elements in the largest tokenizers) and low enough that the parsed
/// header, which takes up to 32 times the disk size of a small array element, fits in memory.
const MAX_KEYS: u64 = 1 << 16;
const MAX_TENSORS: u64 = 1 << 16;
const MAX_ARRAY_ELEMENTS: u64 = 1 << 22;

/// The bytes of one tensor, read from the model file into memory of our own. They are kept in `u64`
/// words so the data is 8-byte aligned, as the GGML block types need; clones share the buffer.
#[derive(Clone)]
pub struct TensorBytes {
    words: Arc<Vec<u64>>,
    len: usize,
}

impl TensorBytes {
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    /// Lets this handle's share of the buffer go (once a repacked copy serves the matrix); the memory is
    /// freed when no other handle (a tied embedding table) holds it.
    pub fn release(&mut self) {
        self.words = Arc::new(Vec::new());
        self.len = 0;
    }
}

/// A model file open for reading tensors: its path, its size when opened, and the handle.
pub(crate) struct WeightFile {
    path: PathBuf,
    len: u64,
    /// Reads are a seek and a read, so one reader at a time.
    file: Mutex<File>,
}

impl WeightFile {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(Self {
            path: path.to_path_buf(),
            len,
            file: Mutex::new(file),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Reads `len` bytes at `offset` (`what` they are, e.g. "tensor output.weight", for messages). Ranges
    /// are checked against the size at open, so running out of bytes means the file changed since.
    pub(crate) fn read(&self, what: &str, offset: u64, len: usize) -> Result<TensorBytes> {
        let mut words = zeroed_words(len.div_ceil(8)).ok_or_else(|| EngineError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("no memory for the {len} bytes of {what}"),
            ),
        })?;
        let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len];
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let read = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(buf));
        match read {
            Ok(()) => Ok(TensorBytes {
                words: Arc::new(words),
                len,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let now = file.metadata().map_or(0, |m| m.len());
                Err(EngineError::Corrupt {
                    path: self.path.clone(),
                    detail: format!(
                        "{what} needs bytes {offset}..{} but the file now has {now} bytes (it had {} when opened): it changed while the model was loading",
                        offset + len as u64,
                        self.len
                    ),
                })
            }
            Err(source) => Err(EngineError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// `n` zeroed words, or `None` when the memory is not there (rather than aborting the process).
fn zeroed_words(n: usize) -> Option<Vec<u64>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, 0);
    Some(v)
}

/// One tensor of the file: its type, its shape (outermost first, e.g. `[rows, cols]`) and its bytes.
#[derive(Clone)]
pub struct TensorData {
    pub name: String,
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub data: TensorBytes,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    file: WeightFile,
}

impl GgufFile {
    /// Opens `path` and reads its header; tensor data is read later, by `tensor`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = WeightFile::open(path)?;
        let corrupt = |detail: String| EngineError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let content = {
            let handle = file.file.lock().unwrap_or_else(|p| p.into_inner());
            let mut header = Header {
                r: BufReader::new(&*handle),
                pos: 0,
                len: file.len,
            };
            let magic = header.magic().map_err(corrupt)?;
            if magic != *b"GGUF" {
                return Err(EngineError::NotGguf {
                    path: path.to_path_buf(),
                    magic: String::from_utf8_lossy(&magic[..(file.len as usize).min(4)])
                        .into_owned(),
                });
            }
            header.content().map_err(corrupt)?
        };
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file,
        })
    }

    pub fn file_size(&self) -> u64 {
        self.file.len()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer-valued key, whatever integer width the writer chose.
    pub fn get_usize(&self, key: &str) -> Option<usize> {
        usize::try_from(integer(self.get(key)?)?).ok()
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        match self.get(key)? {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            _ => self.get_usize(key).map(|v| v as f32),
        }
    }

    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)
            .ok_or_else(|| EngineError::MissingMetadata {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    /// Length of an array-valued key (e.g. `tokenizer.ggml.tokens`).
    pub fn array_len(&self, key: &str) -> Option<usize> {
        match self.get(key)? {
            Value::Array(a) => Some(a.len()),
            _ => None,
        }
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// The shape of tensor `name` (outermost first), without reading it.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        Some(self.content.tensor_infos.get(name)?.shape.dims())
    }

    /// Reads tensor `name` into memory.
    pub fn tensor(&self, name: &str) -> Result<TensorData> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::BadTensor {
                path: self.path.clone(),
                name: name.to_string(),
                detail: "missing from the file".into(),
            })?;
        // `open` checked the size and that the tensor lies inside the file.
        let size = tensor_size(info.ggml_dtype, info.shape.dims()).ok_or_else(|| {
            EngineError::BadTensor {
                path: self.path.clone(),
                name: name.to_string(),
                detail: "bad element count".into(),
            }
        })?;
        let data = self.file.read(
            &format!("tensor {name}"),
            self.content.tensor_data_offset + info.offset,
            size,
        )?;
        Ok(TensorData {
            name: name.to_string(),
            dtype: info.ggml_dtype,
            dims: info.shape.dims().to_vec(),
            data,
        })
    }
}

/// Bytes taken by a tensor of `dtype` with shape `dims` (outermost first), or `None` when its rows do not
/// fill whole blocks or the size overflows.
pub fn tensor_size(dtype: GgmlDType, dims: &[usize]) -> Option<usize> {
    let row = *dims.last()?;
    let block = dtype.block_size();
    if !row.is_multiple_of(block) {
        return None;
    }
    let elems = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    (elems / block).checked_mul(dtype.type_size())
}

fn integer(v: &Value) -> Option<i128> {
    Some(match v {
        Value::U8(v) => *v as i128,
        Value::I8(v) => *v as i128,
        Value::U16(v) => *v as i128,
        Value::I16(v) => *v as i128,
        Value::U32(v) => *v as i128,
        Value::I32(v) => *v as i128,
        Value::U64(v) => *v as i128,
        Value::I64(v) => *v as i128,
        _ => return None,
    })
}

/// The GGML type numbers of the GGUF format (ggml.h), for the types candle knows.
fn ggml_dtype(n: u32) -> Option<GgmlDType> {
    Some(match n {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The header parser: reads with a running position so every length is checked against what is left.
/// Errors are details for `EngineError::Corrupt`.
struct Header<R> {
    r: R,
    pos: u64,
    len: u64,
}

type Parsed<T> = std::result::Result<T, String>;

impl<R: Read> Header<R> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn exact<const N: usize>(&mut self, what: &str) -> Parsed<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Parsed<()> {
        if buf.len() as u64 > self.remaining() {
            return Err(format!(
                "{what} needs {} bytes at byte {} but the file ends at {} (an incomplete download?)",
                buf.len(),
                self.pos,
                self.len
            ));
        }
        self.r
            .read_exact(buf)
            .map_err(|e| format!("reading {what} at byte {}: {e}", self.pos))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn magic(&mut self) -> Parsed<[u8; 4]> {
        let mut m = [0u8; 4];
        let n = (self.len as usize).min(4);
        self.fill(&mut m[..n], "the magic bytes")?;
        Ok(m)
    }

    fn u32(&mut self, what: &str) -> Parsed<u32> {
        Ok(u32::from_le_bytes(self.exact(what)?))
    }

    fn u64(&mut self, what: &str) -> Parsed<u64> {
        Ok(u64::from_le_bytes(self.exact(what)?))
    }

    /// A count or length, checked against `max` and against the bytes left at `min_size` bytes apiece.
    fn count(&mut self, what: &str, max: u64, min_size: u64) -> Parsed<usize> {
        let n = self.u64(what)?;
        if n > max {
            return Err(format!(
                "{what}: a count of {n} is more than the {max} this reader accepts"
            ));
        }
        let needed = n.saturating_mul(min_size);
        if needed > self.remaining() {
            return Err(format!(
                "{what}: a count of {n} needs at least {needed} bytes but only {} remain (an incomplete download?)",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Parsed<String> {
        let n = self.count(what, u64::MAX, 1)?;
        let mut bytes = vec![0u8; n];
        self.fill(&mut bytes, what)?;
        // Some writers add a NUL terminator, and some files carry strings that are not valid UTF-8.
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn content(&mut self) -> Parsed<Content> {
        let magic = match self.u32("the version")? {
            2 => VersionedMagic::GgufV2,
            3 => VersionedMagic::GgufV3,
            v => {
                return Err(format!(
                    "GGUF version {v} is not supported (versions 2 and 3 are; re-convert the model with a current llama.cpp)"
                ))
            }
        };
        // The smallest entries: a one-byte key name and a one-byte value; a one-byte name, one dimension.
        let tensors = self.count("the tensor count", MAX_TENSORS, 8 + 1 + 4 + 8 + 4 + 8)?;
        let keys = self.count("the metadata key count", MAX_KEYS, 8 + 1 + 4 + 1)?;
        let mut elements = 0u64;
        let mut metadata = HashMap::with_capacity(keys);
        for i in 0..keys {
            let key = self.string(&format!("the name of metadata entry {i}"))?;
            let value = self.value(&key, &mut elements)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key {key} appears twice"));
            }
        }
        let mut tensor_infos = HashMap::with_capacity(tensors);
        for i in 0..tensors {
            let name = self.string(&format!("the name of tensor {i}"))?;
            let info = self.tensor_info(&name)?;
            if tensor_infos.insert(name.clone(), info).is_some() {
                return Err(format!("tensor {name} appears twice"));
            }
        }
        let alignment = alignment(metadata.get(ALIGNMENT_KEY))?;
        let tensor_data_offset = self
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| {
                format!("{ALIGNMENT_KEY} = {alignment} puts the tensor data past any file")
            })?;
        for (name, info) in &tensor_infos {
            self.check_range(name, info, tensor_data_offset)?;
        }
        Ok(Content {
            magic,
            metadata,
            tensor_infos,
            tensor_data_offset,
        })
    }

    /// One value of metadata key `key`; `elements` counts array elements across the whole header.
    fn value(&mut self, key: &str, elements: &mut u64) -> Parsed<Value> {
        let what = format!("metadata key {key}");
        let ty = self.u32(&what)?;
        if ty != 9 {
            return self.scalar(ty, &what);
        }
        let ty = self.u32(&what)?;
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => return Err(format!("{what} is an array of arrays, which no model uses")),
            _ => return Err(format!("{what} has unknown element type {ty}")),
        };
        let n = self.count(
            &format!("the length of {what}"),
            MAX_ARRAY_ELEMENTS - *elements,
            size,
        )?;
        *elements += n as u64;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(self.scalar(ty, &what)?);
        }
        Ok(Value::Array(values))
    }

    fn scalar(&mut self, ty: u32, what: &str) -> Parsed<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.exact(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.exact(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.exact(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.exact(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.exact(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.exact(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.exact(what)?)),
            7 => Value::Bool(self.exact::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            10 => Value::U64(u64::from_le_bytes(self.exact(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.exact(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.exact(what)?)),
            _ => return Err(format!("{what} has unknown type {ty}")),
        })
    }

    fn tensor_info(&mut self, name: &str) -> Parsed<TensorInfo> {
        let what = format!("tensor {name}");
        let n_dims = self.u32(&what)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(format!(
                "{what} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = self.u64(&what)?;
            dims.push(usize::try_from(d).map_err(|_| format!("{what} has dimension {d}"))?);
        }
        // GGUF lists the innermost dimension first; shapes here are outermost first.
        dims.reverse();
        let ty = self.u32(&what)?;
        let ggml_dtype =
            ggml_dtype(ty).ok_or_else(|| format!("{what} has unsupported GGML type {ty}"))?;
        let offset = self.u64(&what)?;
        Ok(TensorInfo {
            ggml_dtype,
            shape: candle_core::Shape::from(dims),
            offset,
        })
    }

    /// Checks that tensor `name` has a whole number of blocks per row and lies inside the file.
    fn check_range(&self, name: &str, info: &TensorInfo, data_offset: u64) -> Parsed<()> {
        let dims = info.shape.dims();
        let size = tensor_size(info.ggml_dtype, dims).ok_or_else(|| {
            format!(
                "tensor {name}: shape {dims:?} of {:?} does not fill whole blocks of {} or is too large",
                info.ggml_dtype,
                info.ggml_dtype.block_size()
            )
        })?;
        let end = data_offset
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(size as u64));
        match end {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(format!(
                "tensor {name} needs {size} bytes at offset {} after the header, past the end of the file at byte {} (an incomplete download?)",
                info.offset, self.len
            )),
        }
    }
}

/// `general.alignment`: a power of two when present.
fn alignment(value: Option<&Value>) -> Parsed<u64> {
    let Some(value) = value else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let Some(a) = integer(value) else {
        return Err(format!("{ALIGNMENT_KEY} is {value:?}, not an integer"));
    };
    u64::try_from(a)
        .ok()
        .filter(|a| a.is_power_of_two())
        .ok_or_else(|| format!("{ALIGNMENT_KEY} = {a} is not a power of two"))
}
