//! Movie embeddings for lazyrec: each catalog movie becomes a text (a versioned template),
//! the text becomes a vector (fastembed, all-MiniLM-L6-v2 from PyPI, offline), and the vectors
//! go to Qdrant — embedded qdrant-edge by default, a Qdrant server through qdrant-client when
//! configured — in versioned collections switched atomically.

pub mod behaviour;
pub mod cli;
pub mod model;
pub mod pipeline;
pub mod text;
