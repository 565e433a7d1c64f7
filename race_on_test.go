//go:build race

package cyberark

// raceDetector: the race detector slows the model test's histories several times over.
const raceDetector = true
