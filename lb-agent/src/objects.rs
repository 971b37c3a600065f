//! Parsing files of Kubernetes objects (to be written).
