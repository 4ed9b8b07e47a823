//! Operator tools: `tandemstat` (counter readout) and `tandemctl` (commands).
