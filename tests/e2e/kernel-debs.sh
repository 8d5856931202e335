# Sourced by setup.sh: a Debian kernel from its packages, in both layouts.
# Up to Debian's 6.x kernels linux-image-V holds the image (/boot/vmlinuz-V)
# and the modules; from 7.x (trixie-backports' 7.3) linux-image-V is empty
# and depends on linux-binary-V (the image, /usr/lib/modules/V/vmlinuz),
# linux-modules-V and linux-base-V (modules.builtin, modules.order, config).

# The packages of a kernel: the linux-image package named on stdin's first
# line, and the linux-binary, -modules and -base packages of its version it
# depends on, read from `apt-cache depends` of it on stdin.
kernel_packages() {
    sed -n -e '1s/^\(linux-image-[^ ]*\)$/\1/p' \
           -e 's/^ *|\{0,1\}Depends: \(linux-\(binary\|modules\|base\)-[0-9][^ ]*\)$/\1/p'
}

# Extract every kernel package in DEBDIR into OUT (once) and print
# "VERSION VMLINUZ MODULES" of the kernel found there.
kernel_from_debs() {
    local debdir=$1 out=$2 vmlinuz version modules
    if [ ! -e "$out/.complete" ]; then
        rm -rf "$out"
        mkdir -p "$out"
        for deb in "$debdir"/linux-*.deb; do
            dpkg-deb -x "$deb" "$out" || return 1
        done
        touch "$out/.complete"
    fi
    vmlinuz=$(ls "$out"/boot/vmlinuz-* "$out"/usr/lib/modules/*/vmlinuz "$out"/lib/modules/*/vmlinuz 2>/dev/null | head -1 || true)
    [ -n "$vmlinuz" ] || { echo "no kernel image (boot/vmlinuz-V or usr/lib/modules/V/vmlinuz) in $debdir" >&2; return 1; }
    case $vmlinuz in
        */boot/vmlinuz-*) version=${vmlinuz##*/vmlinuz-} ;;
        *) version=$(basename "$(dirname "$vmlinuz")") ;;
    esac
    for modules in "$out/lib/modules/$version" "$out/usr/lib/modules/$version" ""; do
        [ -n "$modules" ] && [ -d "$modules/kernel" ] && break
    done
    [ -n "$modules" ] || { echo "no modules for $version in $debdir" >&2; return 1; }
    echo "$version $vmlinuz $modules"
}
