//! Kubernetes objects -> desired state (to be written).
