/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Hostile domain XML to the migration hook's parser
 * (daemon/libvirt/domain-xml.h): whatever arrives on the hook's stdin must
 * be parsed or refused with a reason, never crash, leak or fetch anything,
 * and a parsed result must be consistent.
 *
 * Built twice: with -DFUZZ_LIBFUZZER as the libFuzzer target fuzz-domain-xml
 * (clang, -Dfuzz=true), and otherwise as fuzz-domain-xml-smoke, which runs
 * the same check on deterministic mutations (fixed seed) of libvirt-shaped
 * documents and hostile constructs in every build.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/libvirt/domain-xml.h"

int fuzz_domain_xml_one(const uint8_t *data, size_t size);

/* 0 when the parser behaved, -1 (said on stderr) when its result breaks its contract. */
int fuzz_domain_xml_one(const uint8_t *data, size_t size) {
        struct vhm_domain_xml *dx = NULL;
        char why[512] = "";
        int r = vhm_domain_xml_parse((const char *) data, size, &dx, why, sizeof(why));
        if (r < 0) {
                if (dx || why[0] == '\0' || strchr(why, '\n')) {
                        fprintf(stderr, "refused without one line of reason, or with a result: \"%s\"\n", why);
                        return -1;
                }
                return 0;
        }
        int bad = 0;
        if (!dx || dx->ndevices > VHM_DX_MAX_DEVICES || (!dx->memory_shared && dx->memory_why[0] == '\0'))
                bad = 1;
        for (unsigned i = 0; !bad && i < dx->ndevices; i++) {
                const struct vhm_dx_device *d = &dx->devices[i];
                if (d->kind != VHM_DX_INTERFACE && d->mac)
                        bad = 1;
                if (d->kind != VHM_DX_INTERFACE && (d->listener == VHM_DX_UNKNOWN) != !d->socket)
                        bad = 1;
                if (d->listener == VHM_DX_QEMU_LISTENS && d->kind != VHM_DX_INTERFACE)
                        bad = 1;
        }
        vhm_domain_xml_free(dx);
        if (bad)
                fprintf(stderr, "inconsistent parse result\n");
        return bad ? -1 : 0;
}

#ifdef FUZZ_LIBFUZZER

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (fuzz_domain_xml_one(data, size) < 0)
                abort();
        return 0;
}

#else

static uint64_t rng_state = 0x2545f4914f6cdd1du;

static uint64_t rnd(void) {
        /* xorshift64*: reproducible without libc's rand(). */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1du;
}

static const char *const seeds[] = {
        "<domain type='kvm'><name>vm1</name><uuid>6C9D8D3A-4D1E-4F4B-9D0E-1B6A0E2C7F11</uuid>"
        "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
        "<cpu><numa><cell id='0' cpus='0' memory='1' memAccess='shared'/><cell id='1' cpus='1' memory='1'/>"
        "</numa></cpu><devices>"
        "<interface type='vhostuser'><mac address='52:54:00:3b:83:1b'/>"
        "<source type='unix' path='/run/vhu0.sock' mode='client'/><model type='virtio'/></interface>"
        "<interface type='vhostuser'><source type='unix' path='/run/vhu1.sock' mode='server'/></interface>"
        "<disk type='vhostuser' device='disk'><source type='unix' path='/run/blk.sock'/><target dev='vdb'/></disk>"
        "<filesystem type='mount'><driver type='virtiofs'/><source socket='/run/fs.sock'/><target dir='t'/>"
        "</filesystem><memory model='dimm' access='private'/></devices></domain>",
        "<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]>"
        "<domain><name>&b;</name></domain>",
        "<!DOCTYPE domain SYSTEM 'file:///etc/passwd'><domain><name>x</name></domain>",
        "<domain xmlns:x='urn:x'><x:devices><interface type='vhostuser'/></x:devices>"
        "<devices><![CDATA[<interface type='vhostuser'/>]]><!-- c --><?pi x?></devices></domain>",
        "<domain><devices><interface type='vhostuser'><source mode='client' path='/a&#10;b'/></interface>"
        "</devices></domain>",
};

static const char *const tokens[] = {
        "<interface type='vhostuser'>",
        "</interface>",
        "<devices>",
        "</devices>",
        "<source path='/x' mode='client'/>",
        "<!DOCTYPE d [<!ENTITY e 'x'>]>",
        "&e;",
        "&#0;",
        "&amp;",
        "]]>",
        "<![CDATA[",
        "<cell memAccess='private'/>",
        "<memoryBacking>",
        "\xff\xfe",
        "<?xml version='1.0' encoding='UTF-16'?>",
        "<a:b xmlns:a='u'>",
        "'",
        "\"",
        "<disk type='vhostuser'>",
        "<filesystem><driver type='virtiofs'/>",
};

static size_t mutate(const char *seed, uint8_t *buf, size_t cap) {
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        unsigned n = 1 + (unsigned) (rnd() % 3);
        for (unsigned i = 0; i < n; i++) {
                size_t at = len ? (size_t) (rnd() % len) : 0;
                switch (rnd() % 4) {
                case 0: /* flip a byte */
                        if (len)
                                buf[at] ^= (uint8_t) (1u << (rnd() % 8));
                        break;
                case 1: /* cut */
                        len = at;
                        break;
                case 2: { /* insert a token */
                        const char *t = tokens[rnd() % (sizeof(tokens) / sizeof(tokens[0]))];
                        size_t tl = strlen(t);
                        if (len + tl <= cap) {
                                memmove(buf + at + tl, buf + at, len - at);
                                memcpy(buf + at, t, tl);
                                len += tl;
                        }
                        break;
                }
                default: /* duplicate a span: repeated devices, deep nesting */
                        if (len) {
                                size_t span = 1 + (size_t) (rnd() % (len - at));
                                if (len + span <= cap) {
                                        memmove(buf + at + span, buf + at, len - at);
                                        len += span;
                                }
                        }
                }
        }
        return len;
}

/* Nesting far deeper than libxml2 accepts by default. */
static int deep(void) {
        size_t depth = 100000, len = 0;
        uint8_t *buf = malloc(depth * 7 + 64);
        if (!buf)
                return -1;
        len += (size_t) sprintf((char *) buf, "<domain><devices>");
        for (size_t i = 0; i < depth; i++, len += 3)
                memcpy(buf + len, "<a>", 3);
        int r = fuzz_domain_xml_one(buf, len);
        free(buf);
        return r;
}

int main(int argc, char *argv[]) {
        unsigned iterations = argc > 1 ? (unsigned) strtoul(argv[1], NULL, 10) : 20000;
        static uint8_t buf[1 << 16];
        unsigned failures = 0, parsed = 0;
        for (unsigned i = 0; i < iterations; i++) {
                const char *seed = seeds[rnd() % (sizeof(seeds) / sizeof(seeds[0]))];
                size_t len = mutate(seed, buf, sizeof(buf));
                struct vhm_domain_xml *dx = NULL;
                char why[16];
                if (vhm_domain_xml_parse((const char *) buf, len, &dx, why, sizeof(why)) == 0) {
                        parsed++;
                        vhm_domain_xml_free(dx);
                }
                if (fuzz_domain_xml_one(buf, len) < 0) {
                        fprintf(stderr, "input %u (%zu bytes): %.*s\n", i, len, (int) len, (const char *) buf);
                        failures++;
                }
        }
        if (deep() < 0)
                failures++;
        printf("%u inputs, %u parsed, %u failures\n", iterations, parsed, failures);
        /* Mutations that never parse would test only the refusal path. */
        if (parsed == 0 || parsed == iterations)
                failures++;
        return failures ? 1 : 0;
}

#endif
