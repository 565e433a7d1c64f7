package cyberark

import (
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"unicode"
)

// The project's Markdown: README.md, CHANGELOG.md, every page under docs/ and any
// Markdown under examples/. Every link in them must lead somewhere: a relative link to
// a file or directory that exists, a #fragment to a heading (GitHub's anchor for it) or
// an explicit <a id> / <a name> of the target page, and an http(s) link to a URL that
// at least parses (nothing is fetched: the tests run without the internet).

// readmeMaxLines is the README's budget: a newcomer reads it in five minutes, and the
// rest lives under docs/.
const readmeMaxLines = 300

func TestREADMELength(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := strings.Count(string(data), "\n")
	if len(data) > 0 && !strings.HasSuffix(string(data), "\n") {
		n++
	}
	if n > readmeMaxLines {
		t.Errorf("README.md has %d lines, more than %d: move detail to a page under docs/ and link it", n, readmeMaxLines)
	}
}

func TestDocLinks(t *testing.T) {
	t.Parallel()
	files, err := docFiles(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found only %v: run the test from the repository root", files)
	}
	broken, links := checkDocLinks(".", files)
	if links == 0 {
		t.Fatal("no links found: the parser is broken")
	}
	if len(broken) > 0 {
		t.Errorf("%d broken links in the documentation (of %d checked):\n%s",
			len(broken), links, strings.Join(broken, "\n"))
	}
	t.Logf("%d links in %d files", links, len(files))
}

// TestDocLinksChecker shows that the checker does catch each kind of broken link, with
// its file and line, and passes the good ones, on a small tree of its own.
func TestDocLinksChecker(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("README.md", strings.Join([]string{
		"# Title",
		"",
		"[ok page](docs/a.md) and [ok anchor](docs/a.md#the-config-path) and [ok dir](docs/)",
		"[missing page](docs/nope.md)",
		"[missing anchor](docs/a.md#no-such-heading)",
		"[ok local](#title) [bad local](#titel)",
		"[ok url](https://example.com/x?y=1#z) [bad url](https://exa mple.com) [no host](https://)",
		"`[in code](nowhere.md)` is not a link",
		"```",
		"[in a fence](nowhere.md)",
		"```",
		"[ok ref][r1] [bad ref][r2]",
		"[ok explicit](docs/a.md#custom) [ok second](docs/a.md#twice-1)",
		"<https://example.com/auto> <a href=\"docs/gone.md\">gone</a>",
		"",
		"[r1]: docs/a.md#twice",
		"[r3]: docs/a.md#nothing-here",
	}, "\n")+"\n")
	write("docs/a.md", strings.Join([]string{
		"# A",
		"",
		"## The `config` path!",
		"",
		"<a id=\"custom\"></a>",
		"## Twice",
		"## Twice",
		"```",
		"# not a heading",
		"```",
	}, "\n")+"\n")
	files, err := docFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	broken, _ := checkDocLinks(root, files)
	got := strings.Join(broken, "\n")
	want := []string{
		"README.md:4: docs/nope.md",
		"README.md:5: docs/a.md#no-such-heading",
		"README.md:6: #titel",
		"README.md:7: https://exa mple.com",
		"README.md:7: https://",
		"README.md:12: [r2]",
		"README.md:14: docs/gone.md",
		"README.md:17: docs/a.md#nothing-here",
	}
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("the checker missed %q; it reported:\n%s", w, got)
		}
	}
	if len(broken) != len(want) {
		t.Errorf("the checker reported %d broken links, want %d:\n%s", len(broken), len(want), got)
	}
}

// docFiles lists the Markdown files whose links are checked, relative to root.
func docFiles(root string) ([]string, error) {
	var files []string
	for _, f := range []string{"README.md", "CHANGELOG.md"} {
		if _, err := os.Stat(filepath.Join(root, f)); err == nil {
			files = append(files, f)
		}
	}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	for _, d := range docs {
		rel, err := filepath.Rel(root, d)
		if err != nil {
			return nil, err
		}
		files = append(files, filepath.ToSlash(rel))
	}
	examples := filepath.Join(root, "examples")
	if _, err := os.Stat(examples); err == nil {
		err := filepath.WalkDir(examples, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && strings.HasSuffix(p, ".md") {
				rel, err := filepath.Rel(root, p)
				if err != nil {
					return err
				}
				files = append(files, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Strings(files)
	return files, nil
}

// mdLine is one line of a Markdown file outside fenced code, with code spans blanked.
type mdLine struct {
	num  int
	text string
}

var (
	fenceRe     = regexp.MustCompile("^[ \t]*(```+|~~~+)")
	atxRe       = regexp.MustCompile(`^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$`)
	setextRe    = regexp.MustCompile(`^ {0,3}(=+|-+)[ \t]*$`)
	anchorTagRe = regexp.MustCompile(`(?i)<a\s[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']`)
	hrefRe      = regexp.MustCompile(`(?i)<a\s[^>]*?\bhref\s*=\s*["']([^"']+)["']`)
	refDefRe    = regexp.MustCompile(`^ {0,3}\[([^\]]+)\]:[ \t]*(\S+)`)
	refUseRe    = regexp.MustCompile(`\]\[([^\]]*)\]`)
	autoLinkRe  = regexp.MustCompile(`<((?i:https?)://[^>\s]*)>`)
	inlineLink  = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
	htmlTagRe   = regexp.MustCompile(`<[^>]+>`)
)

// mdLines splits a Markdown file into the lines that are prose: fenced code blocks are
// dropped, and inline code spans are replaced by spaces (so neither yields links nor
// headings), keeping line numbers.
func mdLines(data string) []mdLine {
	var out []mdLine
	fence := ""
	for i, l := range strings.Split(data, "\n") {
		l = strings.TrimRight(l, "\r")
		if m := fenceRe.FindStringSubmatch(l); m != nil {
			marker := m[1]
			switch {
			case fence == "":
				fence = marker
				continue
			case marker[0] == fence[0] && len(marker) >= len(fence) &&
				strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(l), marker[:1])) == "":
				fence = ""
				continue
			}
		}
		if fence != "" {
			continue
		}
		out = append(out, mdLine{num: i + 1, text: blankCodeSpans(l)})
	}
	return out
}

// blankCodeSpans replaces each `code span` (any run of backticks, closed by a run of the
// same length) by spaces of the same length.
func blankCodeSpans(l string) string {
	b := []byte(l)
	for i := 0; i < len(b); {
		if b[i] != '`' {
			i++
			continue
		}
		j := i
		for j < len(b) && b[j] == '`' {
			j++
		}
		run := j - i
		closeAt := -1
		for k := j; k < len(b); {
			if b[k] != '`' {
				k++
				continue
			}
			m := k
			for m < len(b) && b[m] == '`' {
				m++
			}
			if m-k == run {
				closeAt = m
				break
			}
			k = m
		}
		if closeAt < 0 {
			i = j
			continue
		}
		for k := i; k < closeAt; k++ {
			b[k] = ' '
		}
		i = closeAt
	}
	return string(b)
}

// anchors returns the fragments a page offers: GitHub's anchor of each heading (with
// -1, -2 … for repeats) and every explicit <a id> or <a name>.
func anchors(data string) map[string]bool {
	set := map[string]bool{}
	seen := map[string]int{}
	add := func(heading string) {
		slug := githubSlug(heading)
		if n, ok := seen[slug]; ok {
			seen[slug] = n + 1
			set[fmt.Sprintf("%s-%d", slug, n+1)] = true
			return
		}
		seen[slug] = 0
		set[slug] = true
	}
	// Headings are read from the raw lines (code spans keep their text in the anchor).
	fence := ""
	prev := ""
	for _, l := range strings.Split(data, "\n") {
		l = strings.TrimRight(l, "\r")
		if m := fenceRe.FindStringSubmatch(l); m != nil {
			if fence == "" {
				fence = m[1]
				prev = ""
				continue
			}
			if m[1][0] == fence[0] && len(m[1]) >= len(fence) {
				fence = ""
				prev = ""
				continue
			}
		}
		if fence != "" {
			continue
		}
		if m := atxRe.FindStringSubmatch(l); m != nil {
			add(m[2])
			prev = ""
			continue
		}
		if setextRe.MatchString(l) && strings.TrimSpace(prev) != "" && !strings.Contains(prev, "|") &&
			!strings.HasPrefix(strings.TrimSpace(prev), "- ") {
			add(prev)
			prev = ""
			continue
		}
		for _, m := range anchorTagRe.FindAllStringSubmatch(l, -1) {
			set[m[1]] = true
		}
		prev = l
	}
	return set
}

// githubSlug is the anchor GitHub gives a heading: the rendered text in lower case,
// with everything but letters, digits, spaces, '-' and '_' removed and each space made
// a '-'.
func githubSlug(heading string) string {
	text := inlineLink.ReplaceAllString(heading, "$1") // [text](url) renders as text
	text = htmlTagRe.ReplaceAllString(text, "")
	text = strings.ToLower(strings.TrimSpace(text))
	var b strings.Builder
	for _, r := range text {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// inlineTargets finds the destinations of inline links and images, [text](dest) and
// ![alt](dest "title"), in one line of prose. A destination with a space that is not
// followed by a title is returned whole, space included, so that it is reported: such a
// link does not render as a link.
func inlineTargets(l string) []string {
	var out []string
	for i := 0; ; {
		k := strings.Index(l[i:], "](")
		if k < 0 {
			return out
		}
		start := i + k + 2
		rest := l[start:]
		if strings.HasPrefix(rest, "<") {
			if end := strings.Index(rest, ">"); end > 0 {
				out = append(out, strings.ReplaceAll(rest[1:end], " ", "%20"))
			}
			i = start
			continue
		}
		depth, end := 0, len(rest)
	scan:
		for j, r := range rest {
			switch r {
			case '(':
				depth++
			case ')':
				if depth == 0 {
					end = j
					break scan
				}
				depth--
			}
		}
		dest := strings.TrimSpace(rest[:end])
		if sp := strings.IndexAny(dest, " \t"); sp >= 0 {
			if title := strings.TrimSpace(dest[sp:]); title != "" && strings.ContainsRune(`"'(`, rune(title[0])) {
				dest = dest[:sp]
			}
		}
		out = append(out, dest)
		i = start
	}
}

// checkDocLinks checks every link in files (relative to root) and returns the broken
// ones as "file:line: target: why", and how many links it checked.
func checkDocLinks(root string, files []string) ([]string, int) {
	var broken []string
	checked := 0
	repo := os.DirFS(root) // every file read or looked up stays inside the repository
	anchorCache := map[string]map[string]bool{}
	pageAnchors := func(rel string) (map[string]bool, error) {
		if a, ok := anchorCache[rel]; ok {
			return a, nil
		}
		data, err := fs.ReadFile(repo, rel)
		if err != nil {
			return nil, err
		}
		a := anchors(string(data))
		anchorCache[rel] = a
		return a, nil
	}

	for _, file := range files {
		data, err := fs.ReadFile(repo, file)
		if err != nil {
			broken = append(broken, fmt.Sprintf("%s: %v", file, err))
			continue
		}
		lines := mdLines(string(data))
		report := func(line int, target, why string) {
			broken = append(broken, fmt.Sprintf("%s:%d: %s: %s", file, line, target, why))
		}
		check := func(line int, target string) {
			checked++
			if why := checkTarget(repo, file, target, pageAnchors); why != "" {
				report(line, target, why)
			}
		}

		defs := map[string]bool{}
		for _, l := range lines {
			if m := refDefRe.FindStringSubmatch(l.text); m != nil {
				defs[strings.ToLower(strings.TrimSpace(m[1]))] = true
				check(l.num, strings.Trim(m[2], "<>"))
			}
		}
		for _, l := range lines {
			if refDefRe.MatchString(l.text) {
				continue
			}
			for _, dest := range inlineTargets(l.text) {
				check(l.num, dest)
			}
			for _, m := range refUseRe.FindAllStringSubmatchIndex(l.text, -1) {
				label := l.text[m[2]:m[3]]
				if label == "" { // [text][]: the label is the text
					open := strings.LastIndex(l.text[:m[0]], "[")
					if open < 0 {
						continue
					}
					label = l.text[open+1 : m[0]]
				}
				checked++
				if !defs[strings.ToLower(strings.TrimSpace(label))] {
					report(l.num, "["+label+"]", "no reference definition ["+label+"]: ...")
				}
			}
			for _, m := range autoLinkRe.FindAllStringSubmatch(l.text, -1) {
				check(l.num, m[1])
			}
			for _, m := range hrefRe.FindAllStringSubmatch(l.text, -1) {
				check(l.num, m[1])
			}
		}
	}
	return broken, checked
}

// checkTarget says what is wrong with one link destination found in file, or "".
func checkTarget(repo fs.FS, file, target string, pageAnchors func(string) (map[string]bool, error)) string {
	if target == "" {
		return "empty link"
	}
	if strings.ContainsAny(target, " \t") {
		return "a space in the link destination: escape it as %20"
	}
	if i := strings.Index(target, ":"); i > 0 && !strings.ContainsAny(target[:i], "/#?") {
		scheme := strings.ToLower(target[:i])
		switch scheme {
		case "http", "https":
			u, err := url.Parse(target)
			if err != nil {
				return "not a valid URL: " + err.Error()
			}
			if u.Host == "" || u.Hostname() == "" {
				return "URL without a host"
			}
			if strings.ContainsAny(target, " \t<>\"") {
				return "URL with a space or a character that must be escaped"
			}
			return ""
		case "mailto":
			if _, err := url.Parse(target); err != nil || len(target) == len("mailto:") {
				return "not a valid mailto link"
			}
			return ""
		default:
			return "unexpected URL scheme " + strings.TrimSuffix(scheme, ":")
		}
	}

	pathPart, fragment, _ := strings.Cut(target, "#")
	pathPart, _, _ = strings.Cut(pathPart, "?")
	unescaped, err := url.PathUnescape(pathPart)
	if err != nil {
		return "bad escape in the path: " + err.Error()
	}

	page := file // a bare #fragment points into the file itself
	if unescaped != "" {
		if strings.HasPrefix(unescaped, "/") {
			page = path.Clean(strings.TrimPrefix(unescaped, "/"))
		} else {
			page = path.Clean(path.Join(path.Dir(file), unescaped))
		}
		if page == ".." || strings.HasPrefix(page, "../") {
			return "points outside the repository"
		}
		if _, err := fs.Stat(repo, page); err != nil {
			return "no such file or directory " + page
		}
	}
	if fragment == "" || !strings.HasSuffix(page, ".md") {
		// Fragments of other files (a line of code: #L10) are GitHub's to resolve.
		return ""
	}
	set, err := pageAnchors(page)
	if err != nil {
		return err.Error()
	}
	frag, err := url.PathUnescape(fragment)
	if err != nil {
		frag = fragment
	}
	if !set[frag] {
		return "no heading or <a id> in " + page + " for #" + frag
	}
	return ""
}
