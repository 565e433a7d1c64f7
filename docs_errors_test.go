package cyberark

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The error catalogue, docs/errors.md, must name every error text the engine's code can
// produce, and nothing the code no longer produces. These tests read the code with
// go/ast, so they see messages no other test triggers, and compare them with the
// entries of the catalogue. They deal only with text written in the source: no secret
// or token can appear in their output.
//
// What counts as an error text (a "mechanism"), in the non-test files of the root
// package and of client/:
//
//   - logical.ErrorResponse(format, ...): a 400 to the caller;
//   - logical.CodedError(status, msg): a 409, 429, 502 ...;
//   - errors.New(text) and fmt.Errorf(format, ...): errors returned, wrapped into
//     others, logged, or stored as last_rotation_error;
//   - <fieldErrors>.add(field, format, ...): "field: message", joined into one 400;
//   - append(problems, text): a message added to a list of problems;
//   - errRotation{msg}: a refused rotation, a 400;
//   - assignments to .LastError: the rotation error a config read and rotate-root show;
//   - the Error() methods of error types: their Sprintf/Fprintf formats and the texts
//     they assign;
//   - texts that reach those calls through a local variable, strings.Join, append, or a
//     package function that returns literals (typeWords).
//
// A message is known by its text with each format verb (%s, %d, %q, %w ...) taken as a
// wildcard. Texts that are nothing but verbs and punctuation, once a leading "field: "
// is set aside (a pure "%s", "ca_cert: %s", "%w: %w"), are pass-throughs of another
// message and are not catalogued themselves.
//
// A catalogue entry is a list item that starts with a code span, between the lines
// <!-- errors:begin --> and <!-- errors:end --> of docs/errors.md:
//
//	- `must be at most … characters, got …`
//
// The code span is the message; "…" (or any example value) stands where a verb is. The
// rest of the document is prose and is not read.

const errorsDoc = "docs/errors.md"

// codeMessage is one error text found in the source.
type codeMessage struct {
	pattern string // the text, format verbs kept (%% as a literal per cent sign)
	where   string // file:line of its first occurrence
	how     string // the mechanism that found it
	re      *regexp.Regexp
}

// docEntry is one catalogue entry.
type docEntry struct {
	text string
	line int
}

func TestDocsErrorsCatalogueMatchesCode(t *testing.T) {
	msgs, err := scanErrorMessages(".", "client")
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) < 50 {
		t.Fatalf("found only %d error texts in the code: the scanner has lost track of the code's mechanisms", len(msgs))
	}
	doc, err := os.ReadFile(errorsDoc)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := parseErrorCatalogue(string(doc))
	if err != nil {
		t.Fatalf("%s: %v", errorsDoc, err)
	}
	missing, stale := compareCatalogue(msgs, entries)
	for _, m := range missing {
		t.Errorf("%s does not cover the error text %q (%s, %s); add an entry such as\n\t- `%s`", errorsDoc, m.pattern, m.where, m.how, docForm(m.pattern))
	}
	for _, e := range stale {
		t.Errorf("%s:%d: entry %q matches no error text in the code any more; update or remove it", errorsDoc, e.line, e.text)
	}
	if t.Failed() {
		t.Logf("%d error texts in the code, %d entries in %s", len(msgs), len(entries), errorsDoc)
	}
}

// TestDocsErrorsCheckCanFail shows that the comparison fails both ways: an entry taken
// out of the real catalogue leaves its message uncovered, and an entry for a message
// the code does not have is reported as stale.
func TestDocsErrorsCheckCanFail(t *testing.T) {
	msgs, err := scanErrorMessages(".", "client")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(errorsDoc)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := parseErrorCatalogue(string(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 2 {
		t.Fatalf("%s has %d entries", errorsDoc, len(entries))
	}
	// Drop the entry for the conflict of an unresolved rotation.
	const dropped = "root rotation unresolved:"
	var fewer []docEntry
	for _, e := range entries {
		if !strings.HasPrefix(e.text, dropped) {
			fewer = append(fewer, e)
		}
	}
	if len(fewer) == len(entries) {
		t.Fatalf("%s has no entry starting %q", errorsDoc, dropped)
	}
	missing, _ := compareCatalogue(msgs, fewer)
	found := false
	for _, m := range missing {
		found = found || strings.HasPrefix(m.pattern, dropped)
	}
	if !found {
		t.Errorf("removing the entry %q... did not make its message uncovered", dropped)
	}

	more := append(entries[:len(entries):len(entries)], docEntry{text: "this message is in no code", line: 1})
	_, stale := compareCatalogue(msgs, more)
	if len(stale) != 1 || stale[0].text != "this message is in no code" {
		t.Errorf("an entry matching no code was not reported alone as stale: %v", stale)
	}
}

// TestDocsErrorsScannerMechanisms runs the scanner on a small source that uses every
// mechanism, so that a change to the scanner cannot silently stop seeing one.
func TestDocsErrorsScannerMechanisms(t *testing.T) {
	const src = `package x

var errA = errors.New("sentinel text")
var errB = logical.CodedError(409, "coded text")

type myErr struct{ msg string }

func (e *myErr) Error() string {
	s := fmt.Sprintf("method format %d", 1)
	if e.msg == "" {
		s = "method literal"
	}
	return s
}

func words(n int) string {
	switch n {
	case 1:
		return "returned literal"
	}
	return "other literal"
}

func f(cfg *config) (*logical.Response, error) {
	var problems fieldErrors
	problems.add("field", "add format %q", 1)
	problems.add(k, "%s", words(2))
	problems = append(problems, "appended text")
	cfg.Rotation.LastError = "last error " + cfg.x + " tail"
	takes := "local value: " + strings.Join(all, ", ")
	if len(all) == 0 {
		takes = "local alternative"
	}
	_ = logical.ErrorResponse("response %s; %s", x, takes)
	_ = logical.ErrorResponse("plain 100%")
	_ = logical.ErrorResponse("%s", x)
	_ = logical.ErrorResponse("ca_cert: %s", x)
	_ = &errRotation{"rotation " + err.Error()}
	path := "token"
	_ = fmt.Errorf("read %s again", path)
	_ = logical.CodedError(502, fmt.Sprintf("sprintf %s text", x))
	return nil, fmt.Errorf("wrapped 50%%: %w", err)
}
`
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "x.go", src, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range messagesInPackage(fset, []*ast.File{file}) {
		got[m.pattern] = true
	}
	want := []string{
		"sentinel text", "coded text", "method format %d", "method literal",
		"returned literal", "other literal", "field: add format %q", "appended text",
		"last error %s tail", "local value: %s", "local alternative", "response %s; %s",
		"plain 100%%", "rotation %s", "sprintf %s text", "wrapped 50%%: %w", "read %s again",
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("scanner missed %q", w)
		}
		delete(got, w)
	}
	for g := range got {
		t.Errorf("scanner found %q, which is not a message (or the test's list is behind)", g)
	}

	// Wildcards: a verb matches an example value or "…", the literal text must match.
	re := messageRegexp("must be at most %d characters, got %d")
	for _, s := range []string{"must be at most … characters, got …", "must be at most 256 characters, got 300"} {
		if !re.MatchString(normalizeMessage(s)) {
			t.Errorf("%q should match", s)
		}
	}
	if re.MatchString("must be at most … bytes, got …") {
		t.Error("literal text must match exactly")
	}
	if !messageRegexp("plain 100%%").MatchString("plain 100%") {
		t.Error("%% must match a per cent sign")
	}
}

// compareCatalogue returns the messages no entry covers and the entries no message
// matches.
func compareCatalogue(msgs []codeMessage, entries []docEntry) (missing []codeMessage, stale []docEntry) {
	matched := make([]bool, len(entries))
	for _, m := range msgs {
		covered := false
		for i, e := range entries {
			if m.re.MatchString(normalizeMessage(e.text)) {
				covered, matched[i] = true, true
			}
		}
		if !covered {
			missing = append(missing, m)
		}
	}
	for i, e := range entries {
		if !matched[i] {
			stale = append(stale, e)
		}
	}
	return missing, stale
}

var (
	catalogueBegin = regexp.MustCompile(`^\s*<!--\s*errors:begin\s*-->\s*$`)
	catalogueEnd   = regexp.MustCompile(`^\s*<!--\s*errors:end\s*-->\s*$`)
	catalogueEntry = regexp.MustCompile("^\\s*[-*] `([^`]+)`")
)

// parseErrorCatalogue returns the entries between the begin and end markers.
func parseErrorCatalogue(doc string) ([]docEntry, error) {
	var entries []docEntry
	in, regions := false, 0
	for i, line := range strings.Split(doc, "\n") {
		switch {
		case catalogueBegin.MatchString(line):
			if in {
				return nil, fmt.Errorf("line %d: errors:begin inside a catalogue region", i+1)
			}
			in = true
			regions++
		case catalogueEnd.MatchString(line):
			if !in {
				return nil, fmt.Errorf("line %d: errors:end without errors:begin", i+1)
			}
			in = false
		case in:
			if m := catalogueEntry.FindStringSubmatch(line); m != nil {
				entries = append(entries, docEntry{text: m[1], line: i + 1})
			}
		}
	}
	switch {
	case in:
		return nil, fmt.Errorf("errors:begin without errors:end")
	case regions == 0:
		return nil, fmt.Errorf("no <!-- errors:begin --> ... <!-- errors:end --> region")
	case len(entries) == 0:
		return nil, fmt.Errorf("no entries (list items starting with a code span) in the catalogue regions")
	}
	return entries, nil
}

// verb matches a fmt verb with its flags, width and precision, or %%.
var verb = regexp.MustCompile(`%[-+# 0]*(?:\d+|\*)?(?:\.(?:\d+|\*)?)?[a-zA-Z%]`)

// normalizeMessage sets aside what a message's position in a longer text adds: leading
// ": " and surrounding spaces (client.Error builds its text from such pieces).
func normalizeMessage(s string) string {
	return strings.TrimRight(strings.TrimLeft(s, " :"), " ")
}

// messageRegexp matches a catalogue entry against a code pattern: literal text exactly,
// each verb as anything (an example value, or "…").
func messageRegexp(pattern string) *regexp.Regexp {
	pattern = normalizeMessage(pattern)
	var b strings.Builder
	b.WriteString("^")
	last := 0
	for _, loc := range verb.FindAllStringIndex(pattern, -1) {
		b.WriteString(regexp.QuoteMeta(pattern[last:loc[0]]))
		if pattern[loc[0]:loc[1]] == "%%" {
			b.WriteString("%")
		} else {
			b.WriteString(".*")
		}
		last = loc[1]
	}
	b.WriteString(regexp.QuoteMeta(pattern[last:]))
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// docForm is a pattern as a catalogue entry would write it.
func docForm(pattern string) string {
	return verb.ReplaceAllStringFunc(normalizeMessage(pattern), func(v string) string {
		if v == "%%" {
			return "%"
		}
		return "…"
	})
}

var fieldPrefix = regexp.MustCompile(`^[a-z_]+: `)

// isMessage says whether a pattern has text of its own, beyond verbs, punctuation and a
// leading "field: ".
func isMessage(pattern string) bool {
	rest := fieldPrefix.ReplaceAllString(verb.ReplaceAllString(pattern, ""), "")
	rest = verb.ReplaceAllString(rest, "")
	return strings.ContainsFunc(rest, func(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' })
}

// scanErrorMessages parses the non-test Go files of each directory (one package each)
// and returns their error texts, sorted and without duplicates.
func scanErrorMessages(dirs ...string) ([]codeMessage, error) {
	seen := map[string]bool{}
	var all []codeMessage
	for _, dir := range dirs {
		names, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			return nil, err
		}
		fset := token.NewFileSet()
		var files []*ast.File
		for _, name := range names {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
			if err != nil {
				return nil, err
			}
			files = append(files, f)
		}
		for _, m := range messagesInPackage(fset, files) {
			if !seen[m.pattern] {
				seen[m.pattern] = true
				all = append(all, m)
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].pattern < all[j].pattern })
	return all, nil
}

// scanner finds the error texts of one package.
type scanner struct {
	fset  *token.FileSet
	funcs map[string]*ast.FuncDecl // package functions without a receiver, by name
	found []codeMessage
	seen  map[string]bool
}

func messagesInPackage(fset *token.FileSet, files []*ast.File) []codeMessage {
	s := &scanner{fset: fset, funcs: map[string]*ast.FuncDecl{}, seen: map[string]bool{}}
	for _, f := range files {
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil {
				s.funcs[fd.Name.Name] = fd
			}
		}
	}
	for _, f := range files {
		for _, d := range f.Decls {
			fd, _ := d.(*ast.FuncDecl)
			if fd != nil && fd.Recv != nil && fd.Name.Name == "Error" && fd.Body != nil {
				s.errorMethod(fd)
			}
			ast.Inspect(d, func(n ast.Node) bool {
				s.node(n, fd)
				return true
			})
		}
	}
	return s.found
}

func (s *scanner) add(pattern string, at ast.Node, how string) {
	if !isMessage(pattern) || s.seen[pattern] {
		return
	}
	if strings.HasSuffix(how, "argument") || strings.Contains(how, "(returned by") {
		// Text drawn from elsewhere is a message only if it has words: a single word
		// is a path or a name ("token" in "read %stoken again").
		if !strings.Contains(strings.TrimSpace(verb.ReplaceAllString(pattern, "")), " ") {
			return
		}
	}
	s.seen[pattern] = true
	p := s.fset.Position(at.Pos())
	s.found = append(s.found, codeMessage{
		pattern: pattern,
		where:   fmt.Sprintf("%s:%d", filepath.ToSlash(p.Filename), p.Line),
		how:     how,
		re:      messageRegexp(pattern),
	})
}

// node records the messages one syntax node makes, if any. fn is the enclosing
// function, nil at package level.
func (s *scanner) node(n ast.Node, fn *ast.FuncDecl) {
	switch n := n.(type) {
	case *ast.CallExpr:
		s.call(n, fn)
	case *ast.CompositeLit:
		// errRotation{msg} and &errRotation{msg}
		if id, ok := n.Type.(*ast.Ident); ok && id.Name == "errRotation" && len(n.Elts) > 0 {
			s.expr(n.Elts[0], false, fn, n, "errRotation")
		}
	case *ast.AssignStmt:
		// cfg.Rotation.LastError = ...
		for i, lhs := range n.Lhs {
			if sel, ok := lhs.(*ast.SelectorExpr); ok && sel.Sel.Name == "LastError" && i < len(n.Rhs) {
				s.expr(n.Rhs[i], false, fn, n, "LastError")
			}
		}
	}
}

func (s *scanner) call(c *ast.CallExpr, fn *ast.FuncDecl) {
	pkg, name := callName(c)
	switch {
	case pkg == "logical" && (name == "ErrorResponse" || name == "ErrorResponseWithData"):
		args := c.Args
		if name == "ErrorResponseWithData" && len(args) > 0 {
			args = args[1:]
		}
		if len(args) > 0 {
			s.expr(args[0], len(args) > 1, fn, c, "logical.ErrorResponse")
			s.subs(args[1:], fn, c, "logical.ErrorResponse argument")
		}
	case pkg == "logical" && name == "CodedError" && len(c.Args) == 2:
		s.expr(c.Args[1], false, fn, c, "logical.CodedError")
	case pkg == "errors" && name == "New" && len(c.Args) == 1:
		s.expr(c.Args[0], false, fn, c, "errors.New")
	case pkg == "fmt" && name == "Errorf" && len(c.Args) > 0:
		s.expr(c.Args[0], true, fn, c, "fmt.Errorf")
		s.subs(c.Args[1:], fn, c, "fmt.Errorf argument")
	case pkg == "" && name == "add" && isMethodCall(c) && len(c.Args) >= 2 && isStringLit(c.Args[1]):
		// fieldErrors.add(field, format, args...): "field: " + Sprintf(format, args...)
		field := s.pattern(c.Args[0], false)
		s.add(field+": "+s.pattern(c.Args[1], true), c, "fieldErrors.add")
		s.subs(c.Args[2:], fn, c, "fieldErrors.add argument")
	case pkg == "" && name == "append" && len(c.Args) > 1 && isIdent(c.Args[0], "problems"):
		for _, a := range c.Args[1:] {
			if isStringExpr(a) {
				s.expr(a, false, fn, c, "append(problems, ...)")
			}
		}
	}
}

// errorMethod records the texts an Error() method builds.
func (s *scanner) errorMethod(fd *ast.FuncDecl) {
	ast.Inspect(fd.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			pkg, name := callName(n)
			if pkg == "fmt" && (name == "Sprintf" || name == "Fprintf") {
				i := 0
				if name == "Fprintf" {
					i = 1
				}
				if len(n.Args) > i {
					s.add(s.pattern(n.Args[i], true), n, "Error method")
				}
			}
		case *ast.AssignStmt:
			for _, r := range n.Rhs {
				if isStringLit(r) {
					s.add(s.pattern(r, false), n, "Error method")
				}
			}
		}
		return true
	})
}

// expr records the message an expression makes and the texts it draws from
// elsewhere. format says whether a string literal in it is a format.
func (s *scanner) expr(e ast.Expr, format bool, fn *ast.FuncDecl, at ast.Node, how string) {
	s.add(s.pattern(e, format), at, how)
	s.subs([]ast.Expr{e}, fn, at, how)
}

// pattern is the text an expression makes, with a %s wherever it is not written out.
func (s *scanner) pattern(e ast.Expr, format bool) string {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind == token.STRING {
			v, err := strconv.Unquote(e.Value)
			if err == nil {
				if !format {
					v = strings.ReplaceAll(v, "%", "%%")
				}
				return v
			}
		}
	case *ast.ParenExpr:
		return s.pattern(e.X, format)
	case *ast.BinaryExpr:
		if e.Op == token.ADD {
			return s.pattern(e.X, false) + s.pattern(e.Y, false)
		}
	case *ast.CallExpr:
		if pkg, name := callName(e); pkg == "fmt" && (name == "Sprintf" || name == "Errorf") && len(e.Args) > 0 {
			return s.pattern(e.Args[0], true)
		}
	}
	return "%s"
}

// subs records texts that reach a message through the expressions given: a local
// variable's assignments, strings.Join and append, a Sprintf, a concatenation, or a
// package function that returns literals.
func (s *scanner) subs(es []ast.Expr, fn *ast.FuncDecl, at ast.Node, how string) {
	for _, e := range es {
		s.sub(e, fn, at, how, 0)
	}
}

func (s *scanner) sub(e ast.Expr, fn *ast.FuncDecl, at ast.Node, how string, depth int) {
	if depth > 4 {
		return
	}
	switch e := e.(type) {
	case *ast.ParenExpr:
		s.sub(e.X, fn, at, how, depth+1)
	case *ast.BinaryExpr:
		s.sub(e.X, fn, at, how, depth+1)
		s.sub(e.Y, fn, at, how, depth+1)
	case *ast.Ident:
		if fn == nil || fn.Body == nil {
			return
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			a, ok := n.(*ast.AssignStmt)
			if !ok || len(a.Lhs) != len(a.Rhs) {
				return true
			}
			for i, lhs := range a.Lhs {
				if isIdent(lhs, e.Name) {
					s.assigned(a.Rhs[i], fn, a, how, depth+1)
				}
			}
			return true
		})
	case *ast.CallExpr:
		pkg, name := callName(e)
		switch {
		case pkg == "strings" && name == "Join" && len(e.Args) > 0:
			s.sub(e.Args[0], fn, at, how, depth+1)
		case pkg == "fmt" && name == "Sprintf" && len(e.Args) > 0:
			s.subs(e.Args[1:], fn, at, how)
		case pkg == "" && !isMethodCall(e):
			if f := s.funcs[name]; f != nil && f.Body != nil && isStringFunc(f) {
				ast.Inspect(f.Body, func(n ast.Node) bool {
					if r, ok := n.(*ast.ReturnStmt); ok && len(r.Results) == 1 && isStringExpr(r.Results[0]) {
						s.add(s.pattern(r.Results[0], false), r, how+" (returned by "+name+")")
					}
					return true
				})
			}
		}
	}
}

// assigned records what one assignment to a variable contributes.
func (s *scanner) assigned(rhs ast.Expr, fn *ast.FuncDecl, at ast.Node, how string, depth int) {
	if c, ok := rhs.(*ast.CallExpr); ok {
		if pkg, name := callName(c); pkg == "" && name == "append" {
			for _, a := range c.Args[1:] {
				if isStringExpr(a) {
					s.add(s.pattern(a, false), a, how)
				}
			}
			return
		}
	}
	if isStringExpr(rhs) {
		s.add(s.pattern(rhs, false), at, how)
	}
	s.sub(rhs, fn, at, how, depth)
}

// callName is the package (or "" for a local or method call) and name of a call.
func callName(c *ast.CallExpr) (pkg, name string) {
	switch f := c.Fun.(type) {
	case *ast.Ident:
		return "", f.Name
	case *ast.SelectorExpr:
		if x, ok := f.X.(*ast.Ident); ok && (x.Name == "logical" || x.Name == "errors" || x.Name == "fmt" || x.Name == "strings") {
			return x.Name, f.Sel.Name
		}
		return "", f.Sel.Name
	}
	return "", ""
}

func isMethodCall(c *ast.CallExpr) bool {
	_, ok := c.Fun.(*ast.SelectorExpr)
	return ok
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func isStringLit(e ast.Expr) bool {
	l, ok := e.(*ast.BasicLit)
	return ok && l.Kind == token.STRING
}

// isStringExpr says whether an expression is text written in the source: a literal, a
// concatenation with one, or a Sprintf.
func isStringExpr(e ast.Expr) bool {
	switch e := e.(type) {
	case *ast.BasicLit:
		return e.Kind == token.STRING
	case *ast.ParenExpr:
		return isStringExpr(e.X)
	case *ast.BinaryExpr:
		return e.Op == token.ADD && (isStringExpr(e.X) || isStringExpr(e.Y))
	case *ast.CallExpr:
		pkg, name := callName(e)
		return pkg == "fmt" && name == "Sprintf"
	}
	return false
}

// isStringFunc says whether a function returns one string.
func isStringFunc(f *ast.FuncDecl) bool {
	r := f.Type.Results
	return r != nil && len(r.List) == 1 && len(r.List[0].Names) <= 1 && isIdent(r.List[0].Type, "string")
}
