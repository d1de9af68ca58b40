# Sourced by the other scripts: installs missing Debian packages, finds nvcc.
# Usage: ensure_packages PKG...   (apt-get only for what dpkg does not list as installed)

ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"; }; then
    echo "warning: could not install ${missing[*]}; continuing with what is present" >&2
  fi
}

# nvcc is often installed outside PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

jobs() { nproc 2>/dev/null || echo 2; }

# NVSHMEM's headers and libraries for compiling the NVSHMEM transport: the pip package
# nvidia-nvshmem-cu13 pinned to the GPU machine's version, installed into folder $1 (once).
# Prints the folder holding include/ and lib/; prints nothing when it cannot be fetched.
ensure_nvshmem() {
  local dir=$1 home="$1/nvidia/nvshmem"
  if [ ! -f "$home/include/nvshmem.h" ]; then
    local pip_cmd=""
    for py in python3 /usr/bin/python3; do
      "$py" -m pip --version >/dev/null 2>&1 && { pip_cmd="$py -m pip"; break; }
    done
    [ -z "$pip_cmd" ] && { echo "warning: no pip; NVSHMEM code not compiled" >&2; return 0; }
    $pip_cmd install --quiet --no-deps --disable-pip-version-check --target "$dir" \
      nvidia-nvshmem-cu13==3.4.5 >&2 ||
      $pip_cmd install --quiet --no-deps --disable-pip-version-check --break-system-packages \
        --target "$dir" nvidia-nvshmem-cu13==3.4.5 >&2 ||
      { echo "warning: could not fetch nvidia-nvshmem-cu13; NVSHMEM code not compiled" >&2; return 0; }
  fi
  echo "$home"
}
