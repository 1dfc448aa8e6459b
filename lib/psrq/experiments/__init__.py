"""The paper's experiments as matrices of configuration cells (conf/experiments/)."""
