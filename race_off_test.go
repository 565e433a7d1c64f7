//go:build !race

package cyberark

const raceDetector = false
