//! Device tensors: buffers with a shape in the backend's storage precision, carved from the
//! device heap (a dropped tensor returns its block at once), and the host transfers.

use std::sync::{Arc, Mutex};

use half::bf16;

use super::GpuBackend;
use crate::backend::Precision;
use crate::gpu::heap::{round_up, Heap};
use crate::gpu::{DevPtr, Device};
use crate::{Error, Result};

/// The device and the allocator state every tensor keeps alive.
pub(super) struct Shared<D: Device> {
    pub(super) dev: D,
    pub(super) heap: Mutex<Heap>,
}

impl<D: Device> Drop for Shared<D> {
    fn drop(&mut self) {
        let regions: Vec<u64> = self.heap.lock().unwrap().regions().collect();
        for r in regions {
            let _ = self.dev.free(r);
        }
    }
}

/// A block of the heap; returned when the last tensor viewing it drops.
struct Block<D: Device> {
    ptr: DevPtr,
    sh: Arc<Shared<D>>,
}

impl<D: Device> Drop for Block<D> {
    fn drop(&mut self) {
        self.sh.heap.lock().unwrap().release(self.ptr);
    }
}

/// A device tensor: a (view of a) heap block, its shape, its storage precision.
pub struct GpuTensor<D: Device> {
    block: Option<Arc<Block<D>>>,
    pub(super) ptr: DevPtr,
    pub(super) shape: Vec<usize>,
    pub(super) precision: Precision,
}

impl<D: Device> GpuTensor<D> {
    /// Device address of element 0 (0 for the unbacked tensor an errored op returns).
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.precision.size()
    }
    pub(super) fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    pub(super) fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }
    /// Address of element `i`.
    pub(super) fn at(&self, i: usize) -> DevPtr {
        self.ptr + (i * self.precision.size()) as u64
    }
    pub(super) fn unbacked(shape: &[usize], precision: Precision) -> Self {
        GpuTensor { block: None, ptr: 0, shape: shape.to_vec(), precision }
    }
}

impl<D: Device> GpuBackend<D> {
    pub(super) fn alloc(&self, shape: &[usize], precision: Precision) -> Result<GpuTensor<D>> {
        let bytes = shape.iter().product::<usize>() * precision.size();
        let mut heap = self.sh.heap.lock().unwrap();
        let ptr = match heap.alloc(bytes) {
            Some(p) => p,
            None => {
                // Nothing fits: a new region from the device (counted). The memory plan's
                // reservation makes this happen only before the chunk loop.
                let size = round_up(bytes);
                if heap.capturing() {
                    return Err(Error::invalid_op(format!(
                        "{}: the memory plan's arena has no {bytes} bytes left during a graph capture (a device allocation cannot be recorded); rerun with graphs off (--graphs off)",
                        self.sh.dev.name()
                    )));
                }
                let base = self.sh.dev.alloc(size)?;
                heap.add_region(base, size);
                heap.alloc(bytes).expect("a fresh region fits its block")
            }
        };
        drop(heap);
        Ok(GpuTensor {
            block: Some(Arc::new(Block { ptr, sh: self.sh.clone() })),
            ptr,
            shape: shape.to_vec(),
            precision,
        })
    }

    pub(super) fn new_tensor(&self, shape: &[usize]) -> Result<GpuTensor<D>> {
        self.alloc(shape, self.precision)
    }

    /// A view of `t`'s elements `[offset, offset + numel(shape))`.
    pub(super) fn view(&self, t: &GpuTensor<D>, offset: usize, shape: &[usize]) -> GpuTensor<D> {
        GpuTensor { block: t.block.clone(), ptr: t.at(offset), shape: shape.to_vec(), precision: t.precision }
    }

    pub(super) fn try_upload(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor<D>> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::invalid_op(format!("upload: {} values for shape {shape:?}", data.len())));
        }
        let t = self.new_tensor(shape)?;
        self.try_write(&t, data)?;
        Ok(t)
    }

    /// Host f32 data into `t`'s storage (same element count), rounded to the precision.
    pub(super) fn try_write(&self, t: &GpuTensor<D>, data: &[f32]) -> Result<()> {
        if data.len() != t.numel() || t.ptr == 0 {
            return Err(Error::invalid_op(format!(
                "write: {} values into a tensor of shape {:?}",
                data.len(),
                t.shape
            )));
        }
        match t.precision {
            Precision::F32 => self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(data)),
            Precision::Bf16 => {
                let b: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&b))
            }
        }
    }

    pub(super) fn try_download(&self, t: &GpuTensor<D>) -> Result<Vec<f32>> {
        if t.ptr == 0 {
            return Err(Error::invalid_op("download of a tensor an earlier failed op did not produce"));
        }
        match t.precision {
            Precision::F32 => {
                let mut v = vec![0f32; t.numel()];
                self.sh.dev.d2h(t.ptr, bytemuck::cast_slice_mut(&mut v))?;
                Ok(v)
            }
            Precision::Bf16 => {
                let mut v = vec![bf16::ZERO; t.numel()];
                self.sh.dev.d2h(t.ptr, bytemuck::cast_slice_mut(&mut v))?;
                Ok(v.iter().map(|x| x.to_f32()).collect())
            }
        }
    }
}
