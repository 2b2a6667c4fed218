//! Post-processing: turns what the model generated into a suggestion worth showing, and decides inside the
//! decode loop when a suggestion is complete.
