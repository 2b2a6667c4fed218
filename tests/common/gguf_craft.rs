//! Crafted GGUF files for the tests of bad input: a real fixture read back (metadata and tensor bytes),
//! changed the way a corrupt or hostile file would be, and written out again in GGUF v3. This stands in
//! for corrupt files, which no real tool produces on demand; the writer is ours so that it can write what
//! a correct writer refuses to (a wrapped offset, a zero alignment).

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use codellama_engine::gguf::GgufFile;

const ALIGNMENT: u64 = 32;

pub struct Crafted {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<CraftedTensor>,
}

pub struct CraftedTensor {
    pub name: String,
    pub dtype: GgmlDType,
    /// Outermost first, as `TensorData::dims`.
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
    /// Written instead of the tensor's real offset.
    pub offset: Option<u64>,
}

impl Crafted {
    /// Everything `path` holds, tensors in file order.
    pub fn read(path: &Path) -> Self {
        let f = GgufFile::open(path).expect("a valid fixture");
        let mut metadata: Vec<(String, Value)> = f
            .content
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        let mut infos: Vec<_> = f.content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, info)| info.offset);
        let tensors = infos
            .into_iter()
            .map(|(name, info)| CraftedTensor {
                name: name.clone(),
                dtype: info.ggml_dtype,
                dims: info.shape.dims().to_vec(),
                bytes: f.tensor(name).expect("tensor").data.bytes().to_vec(),
                offset: None,
            })
            .collect();
        Self { metadata, tensors }
    }

    /// Sets (or adds) metadata key `key`.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut CraftedTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn write(&self, path: &Path) {
        let mut out = Vec::new();
        self.header(&mut out);
        out.resize(align(out.len() as u64) as usize, 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.bytes);
            out.resize(align(out.len() as u64) as usize, 0);
        }
        std::fs::write(path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    fn header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            string(out, key);
            out.extend_from_slice(&type_id(value).to_le_bytes());
            payload(out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            string(out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in t.dims.iter().rev() {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            out.extend_from_slice(&ggml_type(t.dtype).to_le_bytes());
            out.extend_from_slice(&t.offset.unwrap_or(offset).to_le_bytes());
            offset = align(offset + t.bytes.len() as u64);
        }
    }
}

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF value type numbers (gguf.md).
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn payload(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            out.extend_from_slice(&items.first().map_or(0, type_id).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                payload(out, item);
            }
        }
    }
}

/// The GGML type numbers (ggml.h).
fn ggml_type(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}
