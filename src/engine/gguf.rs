//! A GGUF file opened for inference: the header and metadata parsed by candle's reader, the tensor data
//! memory-mapped so weights are used in place (no copy, fast warm loads). Opening validates the magic and
//! that every tensor lies inside the file, so a truncated download fails here with a clear message rather
//! than later in a kernel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;

use super::error::{EngineError, Result};

/// A byte range of a memory-mapped file, kept alive by the shared map.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl MappedBytes {
    pub fn new(map: Arc<Mmap>, start: usize, len: usize) -> Self {
        assert!(start + len <= map.len(), "mapped range out of bounds");
        Self { map, start, len }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Tells the kernel these pages are not needed for now (after repacking): they leave this process's
    /// resident set and are read from the page cache again if touched.
    pub fn release(&self) {
        let page = 4096;
        let start = self.start.next_multiple_of(page);
        let end = (self.start + self.len) / page * page;
        if end > start {
            // SAFETY: a read-only file mapping; DONTNEED only drops pages, which are re-read on access.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }
}

/// One tensor of the file: its type, its shape (outermost first, e.g. `[rows, cols]`) and its bytes.
#[derive(Clone)]
pub struct TensorData {
    pub name: String,
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub data: MappedBytes,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    map: Arc<Mmap>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; like every mmap user we assume nobody truncates it while
        // the model is loaded (llama.cpp makes the same assumption).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        if map.len() < 4 || &map[..4] != b"GGUF" {
            let magic = String::from_utf8_lossy(&map[..map.len().min(4)]).into_owned();
            return Err(EngineError::NotGguf {
                path: path.to_path_buf(),
                magic,
            });
        }
        let mut cursor = std::io::Cursor::new(&map[..]);
        let content = Content::read(&mut cursor).map_err(|e| EngineError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let file = Self {
            path: path.to_path_buf(),
            content,
            map: Arc::new(map),
        };
        file.check_tensor_ranges()?;
        Ok(file)
    }

    fn check_tensor_ranges(&self) -> Result<()> {
        let file_len = self.map.len() as u64;
        for (name, info) in &self.content.tensor_infos {
            let size = tensor_size(info.ggml_dtype, info.shape.elem_count()).ok_or_else(|| {
                self.bad_tensor(name, "element count is not a multiple of the block size")
            })?;
            let start = self.content.tensor_data_offset + info.offset;
            if start + size as u64 > file_len {
                return Err(EngineError::Corrupt {
                    path: self.path.clone(),
                    detail: format!(
                        "tensor {name} needs bytes {start}..{} but the file has {file_len} bytes (an incomplete download?)",
                        start + size as u64
                    ),
                });
            }
        }
        Ok(())
    }

    fn bad_tensor(&self, name: &str, detail: &str) -> EngineError {
        EngineError::BadTensor {
            path: self.path.clone(),
            name: name.to_string(),
            detail: detail.to_string(),
        }
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
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
        let v = match self.get(key)? {
            Value::U8(v) => *v as i128,
            Value::I8(v) => *v as i128,
            Value::U16(v) => *v as i128,
            Value::I16(v) => *v as i128,
            Value::U32(v) => *v as i128,
            Value::I32(v) => *v as i128,
            Value::U64(v) => *v as i128,
            Value::I64(v) => *v as i128,
            _ => return None,
        };
        usize::try_from(v).ok()
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

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Result<TensorData> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.bad_tensor(name, "missing from the file"))?;
        let elems = info.shape.elem_count();
        let size = tensor_size(info.ggml_dtype, elems)
            .ok_or_else(|| self.bad_tensor(name, "bad element count"))?;
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok(TensorData {
            name: name.to_string(),
            dtype: info.ggml_dtype,
            dims: info.shape.dims().to_vec(),
            data: MappedBytes::new(self.map.clone(), start, size),
        })
    }
}

/// Bytes taken by `elems` elements of `dtype`, or `None` when they do not fill whole blocks.
pub fn tensor_size(dtype: GgmlDType, elems: usize) -> Option<usize> {
    let block = dtype.block_size();
    elems
        .is_multiple_of(block)
        .then(|| elems / block * dtype.type_size())
}
