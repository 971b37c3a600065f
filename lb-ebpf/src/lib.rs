//! Present so that `lb-agent` can name this crate as a build dependency
//! (and be rebuilt when it changes). The programs are in `main.rs`.
#![no_std]
