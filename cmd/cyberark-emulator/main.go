// Command cyberark-emulator serves the CyberArk Identity tenant emulator from package
// emulator over HTTPS (and optionally loopback HTTP), for end-to-end runs and demos.
// See internal/emulator/README.md.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// secretEnv lets a script pass the quick-start secret without it showing in ps.
const secretEnv = "CYBERARK_EMULATOR_CLIENT_SECRET" //nolint:gosec // the name of an environment variable, not a credential

// errUsage marks errors the flag package has already reported with the usage text.
var errUsage = errors.New("usage")

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "cyberark-emulator:", err)
		os.Exit(1)
	}
}

type options struct {
	config       string
	app          string
	clientID     string
	clientSecret string
	scopes       string
	rotation     string
	expiresIn    int
	httpAddr     string
	httpsAddr    string
	http1Only    bool
	caOut        string
	addrFile     string
}

func run(args []string) error {
	o, set, err := parseFlags(args)
	if err != nil || o == nil {
		return err
	}
	cfg, err := buildConfig(*o, set)
	if err != nil {
		return err
	}
	if o.httpAddr == "" && o.httpsAddr == "" {
		return errors.New("both -http and -https are off: nothing to serve")
	}
	if o.httpAddr != "" {
		if err := checkLoopback(o.httpAddr); err != nil {
			return fmt.Errorf("-http: %w", err)
		}
	}

	emu, err := emulator.New(cfg)
	if err != nil {
		return err
	}
	ca, err := emulator.NewCA()
	if err != nil {
		return err
	}
	if o.caOut != "" {
		if err := writeFileAtomic(o.caOut, ca.CertPEM()); err != nil {
			return fmt.Errorf("write CA: %w", err)
		}
	}
	return serve(*o, emu, ca)
}

// parseFlags reads the command line; nil options and no error mean -help was answered.
func parseFlags(args []string) (*options, map[string]bool, error) {
	var o options
	fs := flag.NewFlagSet("cyberark-emulator", flag.ContinueOnError)
	fs.StringVar(&o.config, "config", "", "JSON emulator config `file` (see internal/emulator/README.md)")
	fs.StringVar(&o.app, "app", "", "quick start: application `ID` of the one app")
	fs.StringVar(&o.clientID, "client-id", "", "quick start: client `ID` (service user login name)")
	fs.StringVar(&o.clientSecret, "client-secret", "", "quick start: client `secret`; prefer $"+secretEnv+", which ps does not show")
	fs.StringVar(&o.scopes, "scopes", "", "quick start: comma-separated `scopes` the app defines")
	fs.StringVar(&o.rotation, "rotation-scope", "", "quick start: a `scope` whose tokens may call UserMgmt/ChangeUserPassword, for root rotation")
	fs.IntVar(&o.expiresIn, "expires-in", 0, "token lifetime in `seconds` (0 = config value or 18000)")
	fs.StringVar(&o.httpAddr, "http", "", "plain HTTP listen `address`, loopback only (empty = off)")
	fs.StringVar(&o.httpsAddr, "https", "127.0.0.1:0", "HTTPS listen `address` (empty = off)")
	fs.BoolVar(&o.http1Only, "http1-only", false, "offer HTTP/1.1 alone over HTTPS, as a tenant or TLS-terminating proxy without HTTP/2 would")
	fs.StringVar(&o.caOut, "ca-out", "", "write the CA certificate (PEM) to this `file`")
	fs.StringVar(&o.addrFile, "addr-file", "", "write the listen URLs as JSON to this `file` once listening")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, nil
		}
		return nil, nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return &o, set, nil
}

// serve answers on the listeners o names until a signal or a server fails.
func serve(o options, emu *emulator.Emulator, ca *emulator.CA) error {
	logger := log.New(os.Stderr, "cyberark-emulator: ", log.LstdFlags|log.Lmicroseconds)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Handlers sleeping in a Delay fault watch their request context; deriving it from
	// a context that shutdown cancels keeps them from holding up the exit.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()

	type listener struct {
		srv  *http.Server
		ln   net.Listener
		tls  bool
		name string
	}
	var listeners []listener
	defer func() {
		for _, l := range listeners {
			_ = l.ln.Close()
		}
	}()
	urls := map[string]string{}
	newServer := func() *http.Server {
		return &http.Server{
			Handler:           logRequests(emu, logger),
			ReadHeaderTimeout: 10 * time.Second,
			BaseContext:       func(net.Listener) context.Context { return baseCtx },
			ErrorLog:          logger,
		}
	}
	var lc net.ListenConfig
	if o.httpAddr != "" {
		ln, err := lc.Listen(ctx, "tcp", o.httpAddr)
		if err != nil {
			return fmt.Errorf("-http: %w", err)
		}
		listeners = append(listeners, listener{srv: newServer(), ln: ln, name: "http"})
		urls["http"] = "http://" + ln.Addr().String()
	}
	if o.httpsAddr != "" {
		ln, err := lc.Listen(ctx, "tcp", o.httpsAddr)
		if err != nil {
			return fmt.Errorf("-https: %w", err)
		}
		srv := newServer()
		srv.TLSConfig = ca.ServerTLSConfig()
		if o.http1Only {
			http1Only(srv)
		}
		listeners = append(listeners, listener{srv: srv, ln: ln, tls: true, name: "https"})
		urls["https"] = "https://" + ln.Addr().String()
	}
	if o.addrFile != "" {
		data, err := json.Marshal(urls)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(o.addrFile, append(data, '\n')); err != nil {
			return fmt.Errorf("write address file: %w", err)
		}
	}

	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		logger.Printf("serving %s on %s", l.name, urls[l.name])
		go func() {
			var err error
			if l.tls {
				err = l.srv.ServeTLS(l.ln, "", "")
			} else {
				err = l.srv.Serve(l.ln)
			}
			errc <- fmt.Errorf("%s server: %w", l.name, err)
		}()
	}

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Printf("shutting down")
	case serveErr = <-errc:
	}
	cancelBase()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, l := range listeners {
		if err := l.srv.Shutdown(shutdownCtx); err != nil {
			logger.Printf("%s shutdown: %v", l.name, err)
		}
	}
	return serveErr
}

// buildConfig takes -config, or the quick-start flags for a one-app, one-client tenant,
// never both: mixing them would leave it unclear which values win.
func buildConfig(o options, set map[string]bool) (emulator.Config, error) {
	quick := set["app"] || set["client-id"] || set["client-secret"] || set["scopes"] || set["rotation-scope"]
	var cfg emulator.Config
	switch {
	case o.config != "" && quick:
		return cfg, errors.New("use either -config or the -app/-client-id/-client-secret/-scopes flags, not both")
	case o.config != "":
		loaded, err := emulator.LoadConfig(o.config)
		if err != nil {
			return cfg, err
		}
		cfg = loaded
	case quick:
		secret := o.clientSecret
		if secret == "" {
			secret = os.Getenv(secretEnv)
		}
		if o.app == "" || o.clientID == "" || secret == "" {
			return cfg, fmt.Errorf("quick start needs -app, -client-id and -client-secret (or $%s)", secretEnv)
		}
		var scopes []string
		for s := range strings.SplitSeq(o.scopes, ",") {
			if s = strings.TrimSpace(s); s != "" {
				scopes = append(scopes, s)
			}
		}
		app := emulator.App{
			ID:      o.app,
			Scopes:  scopes,
			Clients: []emulator.Client{{ID: o.clientID, Secret: secret}},
		}
		if o.rotation != "" {
			if !slices.Contains(app.Scopes, o.rotation) {
				app.Scopes = append(app.Scopes, o.rotation)
			}
			app.ScopeAPIs = map[string][]string{o.rotation: {"UserMgmt/ChangeUserPassword"}}
		}
		cfg.Apps = []emulator.App{app}
	default:
		return cfg, errors.New("give -config FILE, or -app, -client-id and -client-secret")
	}
	if set["expires-in"] {
		if o.expiresIn < 0 {
			return cfg, fmt.Errorf("-expires-in %d is negative", o.expiresIn)
		}
		cfg.ExpiresIn = o.expiresIn
	}
	return cfg, nil
}

// checkLoopback refuses plain HTTP anywhere but loopback: credentials cross it in clear.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address; plain HTTP is for 127.0.0.1, ::1 or localhost only", addr)
}

// writeFileAtomic writes through a temporary file and a rename, so a script polling for
// the file never reads it half written.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // fails harmlessly after the rename
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// logRequests logs one line per request. It logs the path without the query and never a
// header or body, which is where credentials and tokens travel.
func logRequests(next http.Handler, logger *log.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		defer func() {
			status := "no answer"
			if rec.status != 0 {
				status = fmt.Sprint(rec.status)
			}
			logger.Printf("%s %s %s %s", r.Method, r.URL.Path, status, time.Since(start).Round(time.Millisecond))
		}()
		next.ServeHTTP(rec, r)
	})
}

// statusRecorder remembers the status; Unwrap lets http.ResponseController reach the
// underlying writer, which the drop-connection fault needs to hijack.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// http1Only makes srv offer HTTP/1.1 alone over TLS. A non-nil, empty TLSNextProto is
// net/http's switch for no HTTP/2; ALPN then offers http/1.1 only.
func http1Only(srv *http.Server) {
	srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
}
