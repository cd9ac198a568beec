/*
 * avx2_only.c: run a program as if this CPU had AVX2 but no AVX-512, AVX-VNNI or AMX.
 *
 * An LD_PRELOAD library for Linux x86-64 on CPUs with CPUID faulting (the "cpuid_fault" flag
 * of /proc/cpuinfo). At load it asks the kernel to make the CPUID instruction fault in this
 * process (arch_prctl ARCH_SET_CPUID 0; threads started later inherit it), and answers each
 * faulting CPUID from a SIGSEGV handler: it runs the real CPUID with faulting briefly off and
 * clears the feature bits of AVX-512 (every subset), AVX-VNNI and AMX before returning them.
 * Libraries that pick their kernels by CPUID at run time (onnxruntime's MLAS, numpy, oneDNN)
 * then take their AVX2 paths on the same cores, so an int8/fp32 ratio of the AVX2 kernels can
 * be measured on an AVX-512 host. It is an emulation: the AVX2 kernels run on this CPU's
 * execution units, whose AVX2 throughput need not match an AVX2-only CPU's.
 *
 * Limits: the C library chose its string functions before this library loaded; a program that
 * installs its own SIGSEGV handler later replaces this one (a CPUID then kills it, loudly).
 * EOSTREAM_CPUID_MASK_LOG=1 prints each masked leaf once to stderr.
 *
 *     cc -O2 -shared -fPIC -o avx2_only.so avx2_only.c
 *     LD_PRELOAD=$PWD/avx2_only.so python -c 'import numpy; numpy.show_runtime()'
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

static struct sigaction previous;
static int logging;

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void mask(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL */
        *b &= ~(BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31));
        /* ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        *c &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));
        /* EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8 */
        *d &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA; EDX: AVX_VNNI_INT8, AVX_NE_CONVERT */
        *a &= ~(BIT(4) | BIT(5) | BIT(21) | BIT(23));
        *d &= ~(BIT(4) | BIT(5));
    } else if (leaf == 0xd && sub == 0) {
        /* the XSAVE components offered: drop the AVX-512 (5-7) and AMX (17-18) states */
        *a &= ~(BIT(5) | BIT(6) | BIT(7) | BIT(17) | BIT(18));
    } else {
        return;
    }
    if (logging) {
        char line[96];
        int n = snprintf(line, sizeof line, "avx2_only: cpuid leaf %#x.%u masked\n", leaf, sub);
        if (n > 0) (void)!write(2, line, (size_t)n);
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
        uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
        set_cpuid(1);
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
        set_cpuid(0);
        mask(leaf, sub, &a, &b, &c, &d);
        r[REG_RAX] = a, r[REG_RBX] = b, r[REG_RCX] = c, r[REG_RDX] = d;
        r[REG_RIP] += 2;
        return;
    }
    /* a real fault: hand it to whoever handled SIGSEGV before us, else die of it */
    if (previous.sa_flags & SA_SIGINFO && previous.sa_sigaction) {
        previous.sa_sigaction(sig, info, context);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    signal(SIGSEGV, SIG_DFL);
}

__attribute__((constructor)) static void start(void) {
    const char *log = getenv("EOSTREAM_CPUID_MASK_LOG");
    logging = log && *log == '1';
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &previous) != 0 || set_cpuid(0) != 0) {
        static const char msg[] = "avx2_only: this CPU or kernel has no CPUID faulting\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(3);
    }
}
