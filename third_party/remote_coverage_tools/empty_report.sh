#!/bin/sh
# Writes an empty --output_file and succeeds (coverage is not collected offline).
for arg in "$@"; do
  case "$arg" in --output_file=*) : > "${arg#--output_file=}" ;; esac
done
exit 0
