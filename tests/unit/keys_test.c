/* Tests for common/keys: key files (0600 created, 0644 refused), loading,
 * fingerprints. Uses a private temp dir removed at the end of each case. */
#include "common/err.h"
#include "common/keys.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;
static char path[512];

static int setup(void)
{
	if (t_tmpdir("keys", &dir) != 0)
		return -1;
	snprintf(path, sizeof(path), "%s/site.key", dir);
	return 0;
}

static void teardown(void)
{
	t_rmtree(dir);
	free(dir);
	dir = NULL;
}

static void case_created_0600(void)
{
	struct mer_keypair kp, back;
	struct stat st;
	char err[256];
	mode_t old = umask(0); /* a careless umask must not widen the mode */

	T_OK(mer_keypair_generate(&kp));
	int rv = mer_keypair_save(path, &kp, err, sizeof(err));
	umask(old);
	T_OK(rv);
	T_ASSERT(stat(path, &st) == 0);
	T_EQ_INT(st.st_mode & 0777, 0600);
	T_OK(mer_keypair_load(path, &back, err, sizeof(err)));
	T_EXPECT(memcmp(kp.pk, back.pk, sizeof(kp.pk)) == 0);
	T_EXPECT(memcmp(kp.sk, back.sk, sizeof(kp.sk)) == 0);
	/* Never overwritten. */
	T_EQ_INT(mer_keypair_save(path, &kp, err, sizeof(err)), MER_EEXIST);
	mer_keypair_wipe(&back);
	T_EQ_INT(back.sk[0] | back.sk[31], 0);
}

static void case_0644_refused(void)
{
	struct mer_keypair kp, back;
	char err[512] = "";

	T_OK(mer_keypair_generate(&kp));
	T_OK(mer_keypair_save(path, &kp, NULL, 0));
	T_ASSERT(chmod(path, 0644) == 0);
	T_EQ_INT(mer_keypair_load(path, &back, err, sizeof(err)), MER_EPERM);
	T_CONTAINS(err, path);
	T_CONTAINS(err, "0644");
	T_CONTAINS(err, "chmod 600");
	T_ASSERT(chmod(path, 0640) == 0);
	T_EQ_INT(mer_keypair_load(path, &back, err, sizeof(err)), MER_EPERM);
	T_CONTAINS(err, "0640");
	T_ASSERT(chmod(path, 0400) == 0);
	T_OK(mer_keypair_load(path, &back, err, sizeof(err)));
}

static void case_bad_files(void)
{
	struct mer_keypair kp;
	char err[512];
	FILE *f;
	int created = 0;

	T_EQ_INT(mer_keypair_load(path, &kp, err, sizeof(err)), MER_ENOTFOUND);
	f = fopen(path, "w");
	T_ASSERT(f != NULL);
	fputs("not a key\n", f);
	fclose(f);
	T_ASSERT(chmod(path, 0600) == 0);
	T_EQ_INT(mer_keypair_load(path, &kp, err, sizeof(err)), MER_EPARSE);
	T_CONTAINS(err, path);
	T_ASSERT(remove(path) == 0);
	T_OK(mer_keypair_load_or_create(path, &kp, &created, err, sizeof(err)));
	T_EQ_INT(created, 1);
	T_OK(mer_keypair_load_or_create(path, &kp, &created, err, sizeof(err)));
	T_EQ_INT(created, 0);
}

static void case_fingerprint(void)
{
	struct mer_keypair a, b;
	char fa[MER_KEY_FP_SIZE], fb[MER_KEY_FP_SIZE], padded[80];
	char b64[MER_KEY_B64_SIZE];
	uint8_t back[MER_KEY_BYTES];

	T_OK(mer_keypair_generate(&a));
	T_OK(mer_keypair_generate(&b));
	mer_key_fingerprint(a.pk, fa);
	mer_key_fingerprint(b.pk, fb);
	T_EQ_INT(strlen(fa), MER_KEY_FP_SIZE - 1);
	T_EXPECT(strncmp(fa, "SHA256:", 7) == 0);
	T_EXPECT(strcmp(fa, fb) != 0);
	T_OK(mer_key_fingerprint_check(a.pk, fa));
	T_EQ_INT(mer_key_fingerprint_check(b.pk, fa), MER_EAUTH);
	T_EQ_INT(mer_key_fingerprint_check(a.pk, "SHA256:xyz"), MER_EPARSE);
	T_EQ_INT(mer_key_fingerprint_check(a.pk, "MD5:abc"), MER_EPARSE);
	T_EQ_INT(mer_key_fingerprint_check(a.pk, NULL), MER_EPARSE);
	snprintf(padded, sizeof(padded), "%s=", fa);
	T_OK(mer_key_fingerprint_check(a.pk, padded));
	mer_key_public_encode(a.pk, b64);
	T_OK(mer_key_public_decode(b64, back));
	T_EXPECT(memcmp(back, a.pk, 32) == 0);
	T_EQ_INT(mer_key_public_decode("abc", back), MER_EPARSE);
}

/* A key file owned by someone else is refused (review finding 13). Needs
 * root to make such a file; skipped otherwise. */
static void case_other_owner_refused(void)
{
	struct mer_keypair kp, back;
	char err[512] = "";

	if (geteuid() != 0) {
		t_skip("needs root to chown a file");
		return;
	}
	T_OK(mer_keypair_generate(&kp));
	T_OK(mer_keypair_save(path, &kp, NULL, 0));
	T_ASSERT(chown(path, 65534, 65534) == 0);
	T_EQ_INT(mer_keypair_load(path, &back, err, sizeof(err)), MER_EPERM);
	T_CONTAINS(err, path);
	T_CONTAINS(err, "owned by uid 65534");
	T_ASSERT(chown(path, 0, 0) == 0);
	T_OK(mer_keypair_load(path, &back, NULL, 0));
	/* errno is reported as it was (saved before formatting). */
	T_EQ_INT(mer_keypair_save(path, &kp, err, sizeof(err)), MER_EEXIST);
	T_CONTAINS(err, "File exists");
	mer_keypair_wipe(&kp);
	mer_keypair_wipe(&back);
}

#define WITH_DIR(fn)                                                           \
	static void fn##_run(void)                                             \
	{                                                                      \
		T_ASSERT(setup() == 0);                                        \
		fn();                                                          \
		teardown();                                                    \
	}
WITH_DIR(case_created_0600)
WITH_DIR(case_0644_refused)
WITH_DIR(case_bad_files)
WITH_DIR(case_other_owner_refused)

static const struct t_case cases[] = {
    {"created_0600", case_created_0600_run},
    {"0644_refused", case_0644_refused_run},
    {"bad_files", case_bad_files_run},
    {"fingerprint", case_fingerprint},
    {"other_owner_refused", case_other_owner_refused_run},
};

T_MAIN("keys", cases)
