# Sourced by setup.sh and systemd_image.sh: DEBIAN_ARCHIVE, the Debian archive
# this machine's apt is configured with (no archive host is written in this
# project's files). MEMONLINED_DEBIAN_MIRROR overrides it.
debian_archive() {
    if [ -n "${MEMONLINED_DEBIAN_MIRROR:-}" ]; then
        echo "$MEMONLINED_DEBIAN_MIRROR"
        return
    fi
    # The URI of the main archive (".../debian"), not of the security one.
    apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' 2>/dev/null |
        sed 's:/*$::' | grep -E '/debian$' | sort -u | head -1
}
DEBIAN_ARCHIVE=$(debian_archive)
[ -n "$DEBIAN_ARCHIVE" ] || {
    echo "*** no Debian archive in this machine's apt configuration (set MEMONLINED_DEBIAN_MIRROR) ***" >&2
    exit 1
}
