//! Weight schemes: the packed formats a logical expert matrix can be written in.
//!
//! Every format (today [`Wint2`], [`Wint8`], [`Wint4`]; later the 2.5/2.75-bit CCQ hybrids)
//! implements one object-safe trait, [`Scheme`]: it encodes a logical `[K = in, N = out]`
//! f32 matrix, with optional per-input-row importance weights, into named [`Component`]
//! tensors exactly as they are stored in a checkpoint (dtype, shape, little-endian bytes),
//! decodes such components back to f32, and reports its storage cost in bits per weight.
//!
//! The types here are plain data: a [`Packed`] result can be written into a safetensors
//! file by name, and one read back from a file can be decoded after its components are
//! checked against the shapes the scheme expects. Nothing here panics on bad input or
//! prints; every failure is a [`SchemeError`] naming the problem.

pub mod cholesky;
pub mod feedback;
pub mod importance;
pub mod per_channel;
pub mod registry;
pub mod rtn2;
pub mod wint2;
pub mod wint4;
pub mod wint8;

use crate::Dtype;

pub use importance::{Damping, Hessian, Importance};
pub use per_channel::ScaleRule;
pub use registry::SchemeKind;
pub use rtn2::Rtn2;
pub use wint2::{Effort, Wint2};
pub use wint4::Wint4;
pub use wint8::Wint8;

/// One stored tensor of a packed matrix, exactly as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The tensor's suffix in the checkpoint, e.g. `"quant_weight"` or `"super_scales"`.
    pub name: &'static str,
    /// Element type as safetensors names it.
    pub dtype: Dtype,
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// Raw little-endian element bytes, row-major; length = product(shape) * dtype size.
    pub bytes: Vec<u8>,
}

/// A logical `[k, n]` matrix encoded by one scheme: its named component tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The scheme that wrote (and can decode) the components.
    pub kind: SchemeKind,
    /// Logical rows (inputs).
    pub k: usize,
    /// Logical columns (outputs).
    pub n: usize,
    /// The stored tensors, in the order the scheme documents.
    pub components: Vec<Component>,
}

impl Packed {
    /// The component called `name`, if present.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The component called `name`, checked to have the given dtype and shape and a byte
    /// length that matches them.
    pub fn expect_component(&self, name: &'static str, dtype: Dtype, shape: &[usize]) -> Result<&Component, SchemeError> {
        let c = self.component(name).ok_or(SchemeError::MissingComponent { name })?;
        if c.dtype != dtype {
            return Err(SchemeError::ComponentDtype { name, expected: dtype, found: c.dtype });
        }
        if c.shape != shape {
            return Err(SchemeError::ComponentShape { name, expected: shape.to_vec(), found: c.shape.clone() });
        }
        let expected = shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).ok_or(SchemeError::ComponentShape {
            name,
            expected: shape.to_vec(),
            found: c.shape.clone(),
        })?;
        if c.bytes.len() != expected {
            return Err(SchemeError::ComponentLength { name, expected, found: c.bytes.len() });
        }
        Ok(c)
    }
}

/// A weight format: encode a logical matrix into stored components and decode them back.
///
/// Matrices are row-major f32 slices of logical shape `[k, n]`: `w[row * n + col]` is
/// `W[k = row][n = col]`, row = input, column = output (Paddle orientation; transpose
/// PyTorch `[out, in]` weights before encoding).
pub trait Scheme: Send + Sync {
    /// The tag of this format.
    fn kind(&self) -> SchemeKind;

    /// Whether a `[k, n]` matrix can be stored in this format.
    fn check_shape(&self, k: usize, n: usize) -> Result<(), SchemeError>;

    /// Encodes `w` (`[k, n]`, row-major), minimising the error `importance` describes
    /// ([`Importance`]): `||W - What||^2`, `sum_k h_k ||W_k - What_k||^2`, or, with error
    /// feedback, `tr(E^T H E)`.
    fn encode(&self, w: &[f32], k: usize, n: usize, importance: Importance<'_>) -> Result<Packed, SchemeError>;

    /// Decodes `packed` to a row-major `[packed.k, packed.n]` f32 matrix, exactly as the
    /// inference kernels would compute it.
    fn decode(&self, packed: &Packed) -> Result<Vec<f32>, SchemeError>;

    /// Storage cost of a `[k, n]` matrix in bits per logical weight, every component counted.
    fn bits_per_weight(&self, k: usize, n: usize) -> f64;

    /// The components [`Scheme::encode`] writes for a `[k, n]` matrix (whose shape passed
    /// [`Scheme::check_shape`]): name, dtype and shape, in order. Lets a writer lay out a
    /// checkpoint's headers before any data is encoded.
    fn component_layout(&self, k: usize, n: usize) -> Vec<(&'static str, Dtype, Vec<usize>)>;
}

/// Why a scheme refused to encode or decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemeError {
    /// The matrix shape is not one the scheme can store.
    #[error("{scheme} cannot store a [{k}, {n}] matrix: {requirement}")]
    BadShape {
        /// The scheme refusing.
        scheme: SchemeKind,
        /// Rows (inputs) given.
        k: usize,
        /// Columns (outputs) given.
        n: usize,
        /// What the scheme requires, in words.
        requirement: &'static str,
    },
    /// The weight slice does not hold `k * n` values.
    #[error("weight slice holds {found} values, expected k * n = {expected}")]
    WeightLength {
        /// `k * n`.
        expected: usize,
        /// The slice length.
        found: usize,
    },
    /// A weight is NaN or infinite.
    #[error("weight at row {k}, column {n} is not finite ({value})")]
    NonFiniteWeight {
        /// Row (input) index.
        k: usize,
        /// Column (output) index.
        n: usize,
        /// The offending value.
        value: f32,
    },
    /// The importance slice does not hold one value per row.
    #[error("importance holds {found} values, expected one per row ({expected})")]
    ImportanceLength {
        /// `k`.
        expected: usize,
        /// The slice length.
        found: usize,
    },
    /// An importance weight is negative, NaN or infinite.
    #[error("importance of row {k} is {value}; it must be finite and >= 0")]
    BadImportance {
        /// Row (input) index.
        k: usize,
        /// The offending value.
        value: f32,
    },
    /// The packed data was written by another scheme.
    #[error("packed data is {found}, this scheme decodes {expected}")]
    WrongKind {
        /// The decoding scheme.
        expected: SchemeKind,
        /// The tag of the packed data.
        found: SchemeKind,
    },
    /// A component the scheme needs is absent.
    #[error("component {name} is missing")]
    MissingComponent {
        /// The component's name.
        name: &'static str,
    },
    /// A component has the wrong element type.
    #[error("component {name} has dtype {found}, expected {expected}")]
    ComponentDtype {
        /// The component's name.
        name: &'static str,
        /// Dtype the scheme stores.
        expected: Dtype,
        /// Dtype found.
        found: Dtype,
    },
    /// A component has the wrong shape.
    #[error("component {name} has shape {found:?}, expected {expected:?}")]
    ComponentShape {
        /// The component's name.
        name: &'static str,
        /// Shape the scheme requires for this matrix.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A component's byte length does not match its dtype and shape.
    #[error("component {name} holds {found} bytes, expected {expected}")]
    ComponentLength {
        /// The component's name.
        name: &'static str,
        /// product(shape) * dtype size.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// A Hessian does not hold `k * k` values.
    #[error("the Hessian holds {found} values, expected k * k for k = {k}")]
    HessianShape {
        /// Rows of the matrix it is for.
        k: usize,
        /// Values it holds.
        found: usize,
    },
    /// A Hessian entry is not finite, or a diagonal entry is negative.
    #[error("Hessian entry ({row}, {col}) is {value}; entries must be finite and the diagonal >= 0")]
    BadHessian {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// The offending value.
        value: f32,
    },
    /// The relative damping is negative or not finite.
    #[error("damping {value} must be finite and >= 0")]
    BadDamping {
        /// The offending value.
        value: f32,
    },
    /// The damped Hessian could not be factorised even with the largest damping tried.
    #[error("the [{k}, {k}] Hessian is not positive definite even with relative damping {damp}")]
    HessianNotPositive {
        /// Its size.
        k: usize,
        /// The last damping tried.
        damp: f32,
    },
    /// A stored float parameter is NaN or infinite.
    #[error("component {name} holds a non-finite value ({value}) at index {index}")]
    NonFiniteParameter {
        /// The component's name.
        name: &'static str,
        /// Flat element index.
        index: usize,
        /// The offending value.
        value: f32,
    },
}

/// Checks the common encoder inputs: slice lengths, finite weights, valid importance.
pub(crate) fn check_encode_input(w: &[f32], k: usize, n: usize, importance: Importance<'_>) -> Result<(), SchemeError> {
    if let Importance::Hessian(h) = importance {
        if h.k() != k {
            return Err(SchemeError::ImportanceLength { expected: k, found: h.k() });
        }
    }
    let importance = importance.diagonal();
    let expected = k.saturating_mul(n);
    if w.len() != expected {
        return Err(SchemeError::WeightLength { expected, found: w.len() });
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(SchemeError::NonFiniteWeight { k: i / n, n: i % n, value: w[i] });
    }
    if let Some(h) = importance {
        if h.len() != k {
            return Err(SchemeError::ImportanceLength { expected: k, found: h.len() });
        }
        if let Some(i) = h.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(SchemeError::BadImportance { k: i, value: h[i] });
        }
    }
    Ok(())
}

/// Reads little-endian bf16 values of a component as f32, rejecting NaN and infinities.
pub(crate) fn finite_bf16s(c: &Component) -> Result<Vec<f32>, SchemeError> {
    let values: Vec<f32> = c.bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    check_finite(c.name, values)
}

/// Passes `values` through, or names the first NaN or infinity as a
/// [`SchemeError::NonFiniteParameter`] of component `name`.
pub(crate) fn check_finite(name: &'static str, values: Vec<f32>) -> Result<Vec<f32>, SchemeError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(SchemeError::NonFiniteParameter { name, index, value: values[index] }),
        None => Ok(values),
    }
}
